"""Training F-Eval on opinion scores: data, losses, the accelerate loop, resumable state, the final checkpoint.

The backbone and the face encoder stay frozen; the facial projector, the LoRA experts (one per dimension),
the router and the score head are trained. Schedules:

* ``levels`` (default): cross-entropy of the rating word (MOS binned into five equal bands over 0..100, best
  first) on the rating-word logits (Q-Align recipe); the checkpoint scores with rating words;
* ``regression``: smooth-L1 (or L1/MSE) of the regression head against the MOS;
* ``two_stage``: ``levels`` for the first ``stage1_fraction`` of the steps, then ``regression`` (the
  FVQ-Rater recipe);
* ``joint``: both losses at every step.

Every schedule also trains the router (cross-entropy of evaluation prompt -> dimension). The loop runs
unchanged on one CPU/GPU or under ``accelerate launch`` (data parallel). Resumable state lives in
``<out>/state/`` and holds safetensors and JSON only (feval never unpickles).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import FaceEncoderConfig, FEvalConfig
from .dimensions import LEVEL_WORDS
from .errors import ConfigError
from .train_config import (
    DEFAULT_SCHEDULE,
    LOSSES,
    LR_SCHEDULES,
    PRECISIONS,
    SCHEDULES,
    SPLIT_BY,
    TRAIN_CONFIG_NAME,
    TrainConfig,
    check_resume,
)
from .train_data import (
    FACE_CACHE_NAME,
    SKIPPED_NAME,
    SPLITS_DIR,
    Collator,
    EpochSampler,
    Example,
    FaceCache,
    RowDataset,
    abs_or_none,
    eval_prompt,
    expand_rows,
    prepare_data,
)
from .train_state import STATE_DIR, STATE_FILE, load_state, save_state

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_SCHEDULE", "FACE_CACHE_NAME", "LOG_NAME", "LOSSES", "LR_SCHEDULES", "PRECISIONS", "SCHEDULES",
           "SKIPPED_NAME", "SPLITS_DIR", "SPLIT_BY", "STATE_DIR", "TRAIN_CONFIG_NAME", "Collator", "EpochSampler", "Example",
           "FaceCache", "RowDataset", "TrainConfig", "TrainResult", "TrainStep", "enable_gradient_checkpointing",
           "eval_prompt", "expand_rows", "expert_hooks", "level_targets", "lr_factor", "stage_weights", "train"]

LOG_NAME = "train_log.jsonl"
_LOSS_KEYS = ("loss", "level", "reg", "router")


def level_targets(mos: torch.Tensor) -> torch.Tensor:
    """Index of the rating word of each MOS: five equal bands over 0..100 (``[80, 100]`` is ``excellent``,
    ``[60, 80)`` ``good``, ... ``[0, 20)`` ``bad``), best word first as in :data:`LEVEL_WORDS`."""
    n = len(LEVEL_WORDS)
    band = torch.div(mos.float().clamp(0.0, 100.0), 100.0 / n, rounding_mode="floor").clamp(max=n - 1)
    return (n - 1 - band).long()


class TrainStep(nn.Module):
    """Forward pass and losses in one module, so data-parallel wrappers see every trainable parameter used."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any, mos: torch.Tensor, prompts: list[str], weights: dict[str, float],
                loss: str = "smooth_l1") -> dict[str, torch.Tensor]:
        out = self.model(batch)
        zero = out.level_logits.new_zeros(())
        level = reg = zero
        if weights.get("levels", 0.0) > 0:
            level = nn.functional.cross_entropy(out.level_logits.float(), level_targets(mos))
        if weights.get("regression", 0.0) > 0:
            pred, target = out.reg_score.float() / 100.0, mos.float() / 100.0
            if loss == "l1":
                reg = nn.functional.l1_loss(pred, target)
            elif loss == "mse":
                reg = nn.functional.mse_loss(pred, target)
            else:
                reg = nn.functional.smooth_l1_loss(pred, target, beta=0.05)
        router = nn.functional.cross_entropy(self.model.route(prompts).float(), batch.dim_idx)
        total = (weights.get("levels", 0.0) * level + weights.get("regression", 0.0) * reg
                 + weights.get("router", 0.0) * router)
        return {"loss": total, "level": level.detach(), "reg": reg.detach(), "router": router.detach(),
                "level_score": out.level_score.detach(),
                "reg_score": out.reg_score.detach() if out.reg_score is not None else out.level_score.detach()}


@contextlib.contextmanager
def expert_hooks(backbone: nn.Module, dims: Sequence[str] | None) -> Iterator[None]:
    """Keep per-row expert names on every LoRA layer until the backward pass is over.

    PEFT injects ``adapter_names`` with hooks that live only during ``forward``; gradient checkpointing
    re-runs the layers during ``backward``, which would then route every row through one expert (torch
    raises a CheckpointError, or, when the saved tensors happen to line up, computes wrong gradients).
    These hooks stay until the context exits.
    """
    if dims is None:
        yield
        return
    from peft.tuners.lora import LoraLayer

    names = list(dims)

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs["adapter_names"] = names
        return args, kwargs

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True)
               for m in backbone.modules() if isinstance(m, LoraLayer)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def enable_gradient_checkpointing(model: Any) -> None:
    """Checkpoint the backbone's layers while it stays in eval mode (PEFT refuses per-row experts in training).

    transformers only checkpoints layers whose ``training`` flag is set, so the flag is set on the
    checkpointed layers alone (not their sub-modules: dropout and friends stay in eval mode).
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    base = model.base_model
    enable = getattr(base, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # pragma: no cover - older transformers
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    n = 0
    for m in base.modules():
        if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing:
            m.training = True
            n += 1
    if not n:
        raise ConfigError(f"{type(base).__name__} has no checkpointable layers; train without gradient checkpointing")


def stage_weights(cfg: TrainConfig, stage: str) -> dict[str, float]:
    w = {"router": cfg.router_weight}
    if stage in ("levels", "joint"):
        w["levels"] = cfg.level_weight
    if stage in ("regression", "joint"):
        w["regression"] = cfg.regression_weight
    return w


def lr_factor(step: int, stage_bounds: Sequence[int], cfg: TrainConfig) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based): warm-up then decay, restarted per stage."""
    start = 0
    for end in stage_bounds:
        if step < end:
            break
        start = end
    length = max(1, end - start)
    t = step - start
    warm = int(round(cfg.warmup_ratio * length))
    if t < warm:
        return (t + 1) / (warm + 1)
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = (t - warm) / max(1, length - warm)
    if cfg.lr_schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class TrainResult:
    """What a run produced: the checkpoint folder, optimizer steps done, and the last validation metrics."""

    out: Path
    steps: int
    finished: bool
    seconds: float
    val: dict[str, dict[str, float]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def _build_model(cfg: TrainConfig, dims: tuple[str, ...], device: Any) -> tuple[Any, list[tuple[str, nn.Parameter]],
                                                                              torch.optim.Optimizer]:
    """The F-Eval model with fresh experts and heads, its trainable parameters and the AdamW optimizer."""
    from .config import CONFIG_NAME
    from .model import FEvalModel

    base = cfg.base
    if Path(base).expanduser().is_dir():
        base = str(Path(base).expanduser().absolute())
        if (Path(base) / CONFIG_NAME).is_file():
            raise ConfigError(f"--base {base} is a feval checkpoint; pass the backbone it was built on (its "
                              "base_model) instead")
    fcfg = FEvalConfig(base_model=base, mode="trained", score_mode=cfg.score_mode, dims=dims,
                       num_face_tokens=cfg.num_face_tokens, lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                       lora_target_modules=cfg.lora_targets, max_image_pixels=cfg.max_image_pixels,
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
    head_names = ("heads.head.", "heads.router.")
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in named if not n.startswith(head_names)], "lr": cfg.lr, "base_lr": cfg.lr},
         {"params": [p for n, p in named if n.startswith(head_names)], "lr": cfg.head_lr, "base_lr": cfg.head_lr}],
        weight_decay=cfg.weight_decay)
    logger.info("training %d parameters (projector, router, head, LoRA) of %d; experts %s; schedule %s",
                sum(p.numel() for _, p in named), sum(p.numel() for p in model.parameters()), ", ".join(dims),
                cfg.schedule)
    return model, named, optimizer


def train(cfg: TrainConfig) -> TrainResult:
    """Train F-Eval as configured and write the checkpoint to ``cfg.out``; see the module docstring."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    from tqdm.auto import tqdm

    from accelerate.state import AcceleratorState

    t0 = time.time()
    out = Path(cfg.out).expanduser().absolute()
    # a second run in one process may change the precision: forget the first run's settings (the process
    # group set up by ``accelerate launch`` lives in PartialState and stays)
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        # without cpu=True accelerate sets up no process group on a machine without GPUs: torchrun-launched
        # CPU processes (``accelerate launch --multi_gpu`` there) would each train alone
        cpu=not torch.cuda.is_available(),
        mixed_precision="bf16" if cfg.precision == "bf16" else "no",
        gradient_accumulation_steps=cfg.grad_accum,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    main = accelerator.is_main_process
    state_dir = out / STATE_DIR
    if cfg.resume:  # checked on every process, so that none waits for a process that gave up
        check_resume(cfg, out)
        if not (state_dir / STATE_FILE).is_file():
            raise ConfigError(f"--resume: no saved state in {state_dir}; start a new run without --resume")
    elif (state_dir / STATE_FILE).is_file():
        raise ConfigError(f"{out} holds an unfinished or finished run; pass --resume to continue it, or "
                          "choose another --out")
    accelerator.wait_for_everyone()
    if main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out)
    accelerator.wait_for_everyone()

    train_ex, val_ex, dims, cache = prepare_data(cfg, out, accelerator)
    model, named, optimizer = _build_model(cfg, dims, accelerator.device)

    collate = Collator(model, train_ex, cache)
    sampler = EpochSampler(len(train_ex), cfg.seed)  # epochs are set through the (prepared) loader
    train_dl = torch.utils.data.DataLoader(RowDataset(train_ex), batch_size=cfg.batch_size, sampler=sampler,
                                           collate_fn=collate, num_workers=cfg.num_workers)
    val_dl = None
    if val_ex:
        val_dl = torch.utils.data.DataLoader(RowDataset(val_ex), batch_size=cfg.batch_size, shuffle=False,
                                             collate_fn=Collator(model, val_ex, cache), num_workers=cfg.num_workers)
    step_module = TrainStep(model)
    if val_dl is not None:
        step_module, optimizer, train_dl, val_dl = accelerator.prepare(step_module, optimizer, train_dl, val_dl)
    else:
        step_module, optimizer, train_dl = accelerator.prepare(step_module, optimizer, train_dl)

    micro_per_epoch = len(train_dl)
    steps_per_epoch = max(1, math.ceil(micro_per_epoch / cfg.grad_accum))
    total = cfg.max_steps or steps_per_epoch * cfg.epochs
    bounds = [max(1, round(total * cfg.stage1_fraction)), total] if len(cfg.stages) == 2 else [total]
    stop_at = min(total, cfg.stop_after) if cfg.stop_after else total

    # -- resume
    step, epoch, micro_in_epoch = 0, 0, 0
    if cfg.resume:
        saved = load_state(state_dir, model, optimizer, accelerator)
        step, epoch, micro_in_epoch, accelerator.step = saved.step, saved.epoch, saved.micro_in_epoch, saved.micro_steps
        logger.info("resumed at optimizer step %d (epoch %d, batch %d)", step, epoch, micro_in_epoch)

    log_path = out / LOG_NAME
    history: list[dict[str, Any]] = []
    last_val: dict[str, dict[str, float]] = {}
    running: dict[str, torch.Tensor] = {}  # summed on the device; read (one sync) when logged
    count = 0
    bar = tqdm(total=stop_at, initial=step, desc="training", unit="step",
               disable=(not main) or (not cfg.progress) or None)

    def write_log(rec: dict[str, Any]) -> None:
        history.append(rec)
        if main:
            with log_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec, allow_nan=True) + "\n")

    def stage_of(s: int) -> str:
        return cfg.stages[0] if s < bounds[0] else cfg.stages[-1]

    validated = [-1]

    def validate(s: int) -> None:
        nonlocal last_val
        if val_dl is None or validated[0] == s:
            return
        validated[0] = s
        readout = "levels" if stage_of(max(0, s - 1)) == "levels" else "regression"
        last_val = _validate(step_module, val_dl, val_ex, accelerator, readout, dims)
        rec = {"step": s, "epoch": epoch, "val_readout": readout, "val": last_val,
               "val_srcc_mean": _mean([v["srcc"] for v in last_val.values()])}
        write_log(rec)
        if main:
            logger.info("step %d validation SRCC (%s): %s", s, readout,
                        ", ".join(f"{d} {v['srcc']:.3f}" for d, v in last_val.items()))

    if step == 0 and cfg.eval_at_start:
        validate(0)
    done = step >= stop_at
    while not done:
        loader = accelerator.skip_first_batches(train_dl, micro_in_epoch) if micro_in_epoch else train_dl
        loader.set_epoch(epoch)  # the data order of an epoch depends on (seed, epoch) only
        for batch in loader:
            stage = stage_of(step)
            weights = stage_weights(cfg, stage)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * lr_factor(step, bounds, cfg)
            with accelerator.accumulate(step_module), \
                    expert_hooks(model.backbone, batch["batch"].dims if cfg.gradient_checkpointing else None):
                losses = step_module(batch["batch"], batch["mos"], batch["prompts"], weights, cfg.loss)
                accelerator.backward(losses["loss"])
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_([p for _, p in named], cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            micro_in_epoch += 1
            for k in _LOSS_KEYS:
                running[k] = running[k] + losses[k].detach() if k in running else losses[k].detach()
            count += 1
            if not accelerator.sync_gradients:
                continue
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == stop_at:
                local = torch.stack([running[k].float() / count for k in _LOSS_KEYS])
                means = accelerator.reduce(local, reduction="mean").tolist()
                bar.set_postfix(loss=f"{means[0]:.4f}", stage=stage)
                write_log({"step": step, "epoch": epoch, "stage": stage, "lr": optimizer.param_groups[0]["lr"],
                           "loss": means[0], "loss_level": means[1], "loss_reg": means[2], "loss_router": means[3],
                           "seconds": round(time.time() - t0, 2)})
                running, count = {}, 0
            boundary = step in bounds[:-1]
            if (cfg.eval_every and step % cfg.eval_every == 0) or boundary:
                validate(step)
            if step % cfg.save_every == 0 or step == stop_at:
                save_state(state_dir, model, optimizer, accelerator, step,
                            epoch + (micro_in_epoch >= micro_per_epoch),
                            0 if micro_in_epoch >= micro_per_epoch else micro_in_epoch)
            if step >= stop_at:
                done = True
                break
        else:
            epoch += 1
            micro_in_epoch = 0
            if not cfg.eval_every and not done:
                validate(step)
            continue
        # left the epoch early (stopped)
        if micro_in_epoch >= micro_per_epoch:
            epoch += 1
            micro_in_epoch = 0
    bar.close()
    finished = step >= total
    if finished:
        validate(step)
        if main:
            _save_checkpoint(cfg, model, out)
        accelerator.wait_for_everyone()
    else:
        logger.info("stopped after %d of %d steps; continue with --resume", step, total)
    accelerator.end_training()
    return TrainResult(out, step, finished, time.time() - t0, last_val, history)


def _mean(values: Sequence[float]) -> float:
    vals = [v for v in values if isinstance(v, float) and math.isfinite(v)]
    return float(sum(vals) / len(vals)) if vals else float("nan")


@torch.no_grad()
def _validate(step_module: nn.Module, val_dl: Any, val_ex: Sequence[Example], accelerator: Any, readout: str,
              dims: Sequence[str]) -> dict[str, dict[str, float]]:
    from .metrics import correlation_table

    model = accelerator.unwrap_model(step_module).model
    preds, idxs = [], []
    for batch in val_dl:
        with accelerator.autocast():
            out = model(batch["batch"])
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


def _save_checkpoint(cfg: TrainConfig, model: Any, out: Path) -> None:
    """Write the trained checkpoint into the run folder (loadable with ``FEvalScorer.from_pretrained``)."""
    from .scorer import FEvalScorer

    conf = model.config
    conf.score_mode = cfg.score_mode
    if cfg.copy_base:
        src = Path(cfg.base).expanduser().absolute()
        shutil.copytree(src, out / "backbone", dirs_exist_ok=True)
        conf.base_model = "backbone"
    if cfg.copy_face_pack:
        from .faces import _resolve_root

        src = _resolve_root(conf.face.root) / "models" / conf.face.pack
        shutil.copytree(src, out / "face_pack" / "models" / conf.face.pack, dirs_exist_ok=True)
        conf.face.root = "face_pack"
    FEvalScorer(model, None, source=out).save_pretrained(out)
    logger.info("wrote the trained checkpoint to %s (score_mode=%s)", out, conf.score_mode)

