"""Training F-Eval on opinion scores: the accelerate loop, validation, resumable state, the final checkpoint.

The backbone and the face encoder stay frozen; the vision projector, the facial projector, the LoRA experts
(one per dimension in the LLM, and ``vision_experts`` in the vision tower), the router and the score head are
trained (losses and schedules: :mod:`~feval_core.train.steps`). The loop
runs unchanged on one CPU/GPU or under ``accelerate launch`` (data parallel). Resumable state lives in
``<out>/state/`` and holds safetensors and JSON only (feval never unpickles).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..model.config import FaceEncoderConfig, FEvalConfig
from ..questions import router_examples
from .config import TrainConfig, check_resume
from .data import Collator, EpochSampler, Example, RowDataset, abs_or_none, prepare_data
from .probe import routing_accuracy
from .state import STATE_DIR, STATE_FILE, load_state, save_state
from .steps import (
    TrainStep,
    enable_gradient_checkpointing,
    expert_hooks,
    lr_factor,
    score_batch,
    stage_weights,
)

logger = logging.getLogger(__name__)

LOG_NAME = "train_log.jsonl"
_LOSS_KEYS = ("loss", "level", "reg", "router")


@dataclass
class TrainResult:
    """What a run produced: the checkpoint folder, optimizer steps done, and the last validation metrics."""

    out: Path
    steps: int
    finished: bool
    seconds: float
    val: dict[str, dict[str, float]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    probe: dict[str, dict[str, float]] = field(default_factory=dict)  # linear probes of the frozen model (--probe)
    router_accuracy: float = float("nan")  # held-out paraphrases routed to their own dimension (last validation)


def train(cfg: TrainConfig) -> TrainResult:
    """Train F-Eval as configured and write the checkpoint to ``cfg.out``; see the module docstring."""
    return Trainer(cfg).run()


def build_model(cfg: TrainConfig, dims: tuple[str, ...], device: Any) -> tuple[Any, list[tuple[str, nn.Parameter]],
                                                                             torch.optim.Optimizer]:
    """The F-Eval model with fresh experts and heads, its trainable parameters and the AdamW optimizer."""
    from ..model.config import CONFIG_NAME
    from ..model.lmm import FEvalModel

    base = cfg.base
    if Path(base).expanduser().is_dir():
        base = str(Path(base).expanduser().absolute())
        if (Path(base) / CONFIG_NAME).is_file():
            raise ConfigError(f"--base {base} is a feval checkpoint; pass the backbone it was built on (its "
                              "base_model) instead")
    fcfg = FEvalConfig(base_model=base, mode="trained", score_mode=cfg.score_mode, dims=dims,
                       num_face_tokens=cfg.num_face_tokens, lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                       lora_target_modules=cfg.lora_targets, max_image_pixels=cfg.max_image_pixels,
                       vision_experts=cfg.vision_experts, vision_lora_target_modules=cfg.vision_lora_targets,
                       vision_projector="trained" if cfg.train_vision_projector else "frozen",
                       trust_remote_code=cfg.trust_remote_code,
                       face=FaceEncoderConfig(pack=cfg.face_pack, root=abs_or_none(cfg.face_root),
                                              det_size=cfg.det_size, det_thresh=cfg.det_thresh))
    torch.manual_seed(cfg.seed)
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    model = FEvalModel.build(fcfg, device=device, dtype=dtype)
    named = list(model.trainable_parameters())
    for _, p in named:
        if p.dtype != torch.float32:  # trainable weights stay fp32 under mixed precision
            p.data = p.data.float()
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    lr = cfg.learning_rate(model.config.hidden_size)
    optimizer = torch.optim.AdamW(param_groups(named, cfg, lr), weight_decay=cfg.weight_decay)
    logger.info("training %d parameters (projectors, router, head, LoRA) of %d; experts %s, vision experts %s; "
                "schedule %s; lr %.3g", sum(p.numel() for _, p in named), sum(p.numel() for p in model.parameters()),
                ", ".join(dims), cfg.vision_experts, cfg.schedule, lr)
    return model, named, optimizer


def param_groups(named: list[tuple[str, nn.Parameter]], cfg: TrainConfig, lr: float) -> list[dict[str, Any]]:
    """AdamW groups: experts and projectors at ``lr``; the score head at ``head_lr``; the router at ``router_lr``,
    its embedding read with strong weight decay (see :class:`~feval_core.model.heads.Router`)."""
    from ..model.heads import Router

    head, tokens, decayed = ("heads.head.",), ("heads.router.tokens.",), ("heads.router.norm.", "heads.router.proj.")
    return [
        {"params": [p for n, p in named if not n.startswith(head + tokens + decayed)], "lr": lr, "base_lr": lr},
        {"params": [p for n, p in named if n.startswith(head)], "lr": cfg.head_lr, "base_lr": cfg.head_lr},
        {"params": [p for n, p in named if n.startswith(tokens)], "lr": cfg.router_lr, "base_lr": cfg.router_lr},
        {"params": [p for n, p in named if n.startswith(decayed)], "lr": cfg.router_lr, "base_lr": cfg.router_lr,
         "weight_decay": Router.EMBEDDING_DECAY},
    ]


class Trainer:
    """One training run: set-up, resume, the loop of optimizer steps, validation, logging, saving."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.t0 = time.time()
        self.out = Path(cfg.out).expanduser().absolute()
        self.state_dir = self.out / STATE_DIR
        self.accelerator = _accelerator(cfg)
        self.main = self.accelerator.is_main_process
        self.step = self.epoch = self.micro_in_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.last_val: dict[str, dict[str, float]] = {}
        self._validated = -1
        self._running: dict[str, torch.Tensor] = {}  # summed on the device; read (one sync) when logged
        self._count = 0
        self.probe: dict[str, dict[str, float]] = {}
        self.router_accuracy = float("nan")

    # -- set-up -------------------------------------------------------------------------------
    def _check_folder(self) -> None:
        """Refuse to overwrite a run, or to resume one that is not there (checked on every process)."""
        cfg, acc = self.cfg, self.accelerator
        if cfg.resume:
            check_resume(cfg, self.out)
            if not (self.state_dir / STATE_FILE).is_file():
                raise ConfigError(f"--resume: no saved state in {self.state_dir}; start a new run without --resume")
        elif (self.state_dir / STATE_FILE).is_file():
            raise ConfigError(f"{self.out} holds an unfinished or finished run; pass --resume to continue it, or "
                              "choose another --out")
        acc.wait_for_everyone()
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out)
        acc.wait_for_everyone()

    def _prepare(self) -> None:
        """Data, model, optimizer and loaders, wrapped by accelerate; the step plan of the run."""
        cfg, acc = self.cfg, self.accelerator
        train_ex, self.val_ex, self.dims, cache = prepare_data(cfg, self.out, acc)
        self.train_ex, self.cache = train_ex, cache
        self.model, self.named, optimizer = build_model(cfg, self.dims, acc.device)
        sampler = EpochSampler(len(train_ex), cfg.seed)  # epochs are set through the (prepared) loader
        train_dl = torch.utils.data.DataLoader(RowDataset(train_ex), batch_size=cfg.batch_size, sampler=sampler,
                                               collate_fn=Collator(self.model, train_ex, cache),
                                               num_workers=cfg.num_workers)
        parts: list[Any] = [TrainStep(self.model, router_examples(self.dims)), optimizer, train_dl]
        if self.val_ex:
            parts.append(torch.utils.data.DataLoader(RowDataset(self.val_ex), batch_size=cfg.batch_size,
                                                     shuffle=False, collate_fn=Collator(self.model, self.val_ex, cache),
                                                     num_workers=cfg.num_workers))
        prepared = acc.prepare(*parts)
        self.step_module, self.optimizer, self.train_dl = prepared[:3]
        self.val_dl = prepared[3] if self.val_ex else None
        self.micro_per_epoch = len(self.train_dl)
        steps_per_epoch = max(1, math.ceil(self.micro_per_epoch / cfg.grad_accum))
        self.total = cfg.max_steps or steps_per_epoch * cfg.epochs
        self.bounds = [max(1, round(self.total * cfg.stage1_fraction)), self.total] if len(cfg.stages) == 2 \
            else [self.total]
        self.stop_at = min(self.total, cfg.stop_after) if cfg.stop_after else self.total

    def _resume(self) -> None:
        if not self.cfg.resume:
            return
        saved = load_state(self.state_dir, self.model, self.optimizer, self.accelerator)
        self.step, self.epoch, self.micro_in_epoch = saved.step, saved.epoch, saved.micro_in_epoch
        self.accelerator.step = saved.micro_steps
        logger.info("resumed at optimizer step %d (epoch %d, batch %d)", self.step, self.epoch, self.micro_in_epoch)

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        from tqdm.auto import tqdm

        self._check_folder()
        self._prepare()
        self._resume()
        if self.cfg.probe and self.step == 0:
            self._probe()
        self.bar = tqdm(total=self.stop_at, initial=self.step, desc="training", unit="step",
                        disable=(not self.main) or (not self.cfg.progress) or None)
        if self.step == 0 and self.cfg.eval_at_start:
            self.validate(0)
        done = self.step >= self.stop_at
        while not done:
            done = self._epoch()
        self.bar.close()
        finished = self.step >= self.total
        if finished:
            self.validate(self.step)
            if self.main:
                save_checkpoint(self.cfg, self.model, self.out)
            self.accelerator.wait_for_everyone()
        else:
            logger.info("stopped after %d of %d steps; continue with --resume", self.step, self.total)
        self.accelerator.end_training()
        return TrainResult(self.out, self.step, finished, time.time() - self.t0, self.last_val, self.history,
                           self.probe, self.router_accuracy)

    def _epoch(self) -> bool:
        """The rest of the current epoch; True when the run has reached its last step."""
        acc = self.accelerator
        loader = acc.skip_first_batches(self.train_dl, self.micro_in_epoch) if self.micro_in_epoch else self.train_dl
        loader.set_epoch(self.epoch)  # the data order of an epoch depends on (seed, epoch) only
        for batch in loader:
            if self._micro_step(batch):
                if self.micro_in_epoch >= self.micro_per_epoch:  # stopped exactly at the end of an epoch
                    self.epoch += 1
                    self.micro_in_epoch = 0
                return True
        self.epoch += 1
        self.micro_in_epoch = 0
        if not self.cfg.eval_every:
            self.validate(self.step)
        return False

    def _micro_step(self, batch: dict[str, Any]) -> bool:
        """Forward, backward and (every ``grad_accum`` micro-steps) an optimizer step; True at the last step."""
        cfg, acc = self.cfg, self.accelerator
        stage = self._stage_of(self.step)
        weights = stage_weights(cfg, stage)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * lr_factor(self.step, self.bounds, cfg)
        with acc.accumulate(self.step_module), \
                expert_hooks(self.model.backbone, batch["batch"].dims if cfg.gradient_checkpointing else None):
            losses = self.step_module(batch["batch"], batch["mos"], batch["prompts"], weights, cfg.loss,
                                      by_expert=not cfg.gradient_checkpointing)
            acc.backward(losses["loss"])
            if acc.sync_gradients and cfg.max_grad_norm:
                acc.clip_grad_norm_([p for _, p in self.named], cfg.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.micro_in_epoch += 1
        for k in _LOSS_KEYS:
            self._running[k] = self._running[k] + losses[k].detach() if k in self._running else losses[k].detach()
        self._count += 1
        if not acc.sync_gradients:
            return False
        self.step += 1
        self.bar.update(1)
        if self.step % cfg.log_every == 0 or self.step == self.stop_at:
            self._log_losses(stage)
        if (cfg.eval_every and self.step % cfg.eval_every == 0) or self.step in self.bounds[:-1]:
            self.validate(self.step)
        if self.step % cfg.save_every == 0 or self.step == self.stop_at:
            end = self.micro_in_epoch >= self.micro_per_epoch
            save_state(self.state_dir, self.model, self.optimizer, acc, self.step, self.epoch + end,
                       0 if end else self.micro_in_epoch)
        return self.step >= self.stop_at

    def _probe(self) -> None:
        """Linear probes of the frozen model (main process), logged and written to ``probe.json``."""
        from .probe import PROBE_NAME, linear_probe

        if self.main and self.val_ex:
            with self.accelerator.autocast():  # a bf16 backbone feeds the fp32 trainable projector
                self.probe = linear_probe(self.model, self.train_ex, self.val_ex, self.dims, seed=self.cfg.seed,
                                          faces=self.cache.get)
            (self.out / PROBE_NAME).write_text(json.dumps(self.probe, indent=2) + "\n", encoding="utf-8")
            logger.info("linear probes of the frozen model (held-out SRCC): %s", ", ".join(
                f"{d} vision {v['vision']:.3f} answer {v['answer']:.3f}" for d, v in self.probe.items()))
        elif self.main:
            logger.warning("--probe needs validation rows (--val-manifest or --val-fraction > 0); skipped")
        self.accelerator.wait_for_everyone()

    def _stage_of(self, step: int) -> str:
        return self.cfg.stages[0] if step < self.bounds[0] else self.cfg.stages[-1]

    # -- logging and validation ---------------------------------------------------------------
    def _write_log(self, rec: dict[str, Any]) -> None:
        self.history.append(rec)
        if self.main:
            with (self.out / LOG_NAME).open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec, allow_nan=True) + "\n")

    def _log_losses(self, stage: str) -> None:
        local = torch.stack([self._running[k].float() / self._count for k in _LOSS_KEYS])
        means = self.accelerator.reduce(local, reduction="mean").tolist()
        self.bar.set_postfix(loss=f"{means[0]:.4f}", stage=stage)
        self._write_log({"step": self.step, "epoch": self.epoch, "stage": stage,
                         "lr": self.optimizer.param_groups[0]["lr"], "loss": means[0], "loss_level": means[1],
                         "loss_reg": means[2], "loss_router": means[3], "seconds": round(time.time() - self.t0, 2)})
        self._running, self._count = {}, 0

    def validate(self, step: int) -> None:
        """Held-out SRCC/PLCC/KRCC per dimension with the readout of the current stage (once per step)."""
        if self.val_dl is None or self._validated == step:
            return
        self._validated = step
        readout = "levels" if self._stage_of(max(0, step - 1)) == "levels" else "regression"
        self.last_val = validate(self.step_module, self.val_dl, self.val_ex, self.accelerator, readout, self.dims)
        self.router_accuracy = routing_accuracy(self.model, self.dims)
        self._write_log({"step": step, "epoch": self.epoch, "val_readout": readout, "val": self.last_val,
                         "val_srcc_mean": _mean([v["srcc"] for v in self.last_val.values()]),
                         "router_accuracy": self.router_accuracy})
        if self.main:
            logger.info("step %d validation SRCC (%s): %s", step, readout,
                        ", ".join(f"{d} {v['srcc']:.3f}" for d, v in self.last_val.items()))


def _accelerator(cfg: TrainConfig) -> Any:
    return make_accelerator(mixed_precision="bf16" if cfg.precision == "bf16" else "no",
                            gradient_accumulation_steps=cfg.grad_accum)


def make_accelerator(*, cpu: bool | None = None, mixed_precision: str = "no",
                     gradient_accumulation_steps: int = 1) -> Any:
    """accelerate's ``Accelerator`` as feval's trainers use it: one process, or one of the processes that
    ``accelerate launch`` started (data parallel, gradients averaged by DDP). ``cpu`` (default: when there is no
    GPU) keeps the processes on the CPU and joins them with gloo."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    # a second run in one process may change the precision: forget the first run's settings (the process
    # group set up by ``accelerate launch`` lives in PartialState and stays)
    AcceleratorState._reset_state()
    return Accelerator(
        # without cpu=True accelerate sets up no process group on a machine without GPUs: torchrun-launched
        # CPU processes (``accelerate launch --multi_gpu`` there) would each train alone
        cpu=(not torch.cuda.is_available()) if cpu is None else cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def _mean(values: Sequence[float]) -> float:
    vals = [v for v in values if isinstance(v, float) and math.isfinite(v)]
    return float(sum(vals) / len(vals)) if vals else float("nan")


@torch.no_grad()
def validate(step_module: nn.Module, val_dl: Any, val_ex: Sequence[Example], accelerator: Any, readout: str,
             dims: Sequence[str]) -> dict[str, dict[str, float]]:
    """Correlations of the model's predictions with the held-out MOS, per dimension."""
    from ..evaluate.metrics import correlation_table

    model = accelerator.unwrap_model(step_module).model
    preds, idxs = [], []
    for batch in val_dl:
        with accelerator.autocast():
            out = score_batch(model, batch["batch"])
        score = out.level_score if readout == "levels" or out.reg_score is None else out.reg_score.clamp(0, 100)
        p, i = accelerator.gather_for_metrics((score.float(), batch["index"]))
        preds.append(p.cpu())
        idxs.append(i.cpu())
    pred = torch.cat(preds).numpy()
    idx = torch.cat(idxs).numpy()
    result: dict[str, dict[str, float]] = {}
    for d in dims:
        sel = [k for k, i in enumerate(idx) if val_ex[i].dim == d]
        if not sel:
            continue
        mos = np.array([val_ex[idx[k]].mos for k in sel])
        t = correlation_table(pred[sel], mos)
        result[d] = {"srcc": t["srcc"], "plcc": t["plcc"], "krcc": t["krcc"], "n": t["n"]}
    return result


def save_checkpoint(cfg: TrainConfig, model: Any, out: Path) -> None:
    """Write the trained checkpoint into the run folder (loadable with ``FEvalScorer.from_pretrained``)."""
    from ..faces.encoder import _resolve_root
    from ..scoring.scorer import FEvalScorer

    conf = model.config
    conf.score_mode = cfg.score_mode
    if cfg.copy_base:
        src = Path(cfg.base).expanduser().absolute()
        shutil.copytree(src, out / "backbone", dirs_exist_ok=True)
        conf.base_model = "backbone"
    if cfg.copy_face_pack:
        src = _resolve_root(conf.face.root) / "models" / conf.face.pack
        shutil.copytree(src, out / "face_pack" / "models" / conf.face.pack, dirs_exist_ok=True)
        conf.face.root = "face_pack"
    FEvalScorer(model, None, source=out).save_pretrained(out)
    logger.info("wrote the trained checkpoint to %s (score_mode=%s)", out, conf.score_mode)
