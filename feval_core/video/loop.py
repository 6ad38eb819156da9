"""The video trainer's optimizer steps, resumable and data parallel: the image trainer's schedule (width-scaled lr,
warm-up and decay per stage, clipped gradients), its accelerate set-up (:func:`~feval_core.train.loop.
make_accelerator`: one process, or N under ``accelerate launch`` with gradients averaged by DDP) and its saved state
(:mod:`feval_core.train.state`: trainable weights, optimizer, RNGs and position as safetensors and JSON in
``<run>/state/``, written atomically by the main process every ``save_every`` steps, at each epoch's end and where
``stop_after`` stops the run).

Clip features are read from disk per batch (:class:`~feval_core.video.store.StoredClips`), a few batches ahead in a
worker thread. A resumed run takes the same steps as an uninterrupted one: the clip order of epoch ``e`` is the
``e``-th permutation drawn from ``seed`` (replayed, not stored), and torch's generator is seeded per step from
``(seed, step)``. Under N processes each global batch of ``batch_size`` clips is cut into N contiguous parts, one
per process, and each part's mean loss is weighted by its share of the batch, so the averaged gradient is the
gradient of the whole batch's mean loss, as in one process (a process whose part is empty runs one clip at weight
0, since DDP needs every process in every step).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..train.state import STATE_DIR, STATE_FILE, load_state, save_state
from ..train.steps import lr_factor, readout_losses
from .model import VideoFeatures, VideoLMM
from .store import StoredClips

logger = logging.getLogger(__name__)

LOG_NAME = "train_log.jsonl"


def step_seed(seed: int, step: int) -> int:
    """Torch's seed for optimizer step ``step`` of a run seeded ``seed``."""
    return (int(seed) * 1_000_003 + int(step)) % (2**63 - 1)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The clip order of ``epoch``: the ``epoch``-th permutation of one generator seeded ``seed``."""
    rng = np.random.default_rng(seed)
    for _ in range(epoch):
        rng.permutation(n)
    return rng.permutation(n)


def local_part(batch: Sequence[int], rank: int, processes: int) -> tuple[list[int], float]:
    """This process's clips of a global batch and the weight of their mean loss (``processes x part / batch``:
    the processes' weighted means average to the batch's mean). An empty part is the batch's first clip at 0."""
    part = np.array_split(np.asarray(batch), processes)[rank]
    if len(part) == 0:
        return [int(batch[0])], 0.0
    return [int(i) for i in part], processes * len(part) / len(batch)


class VideoTrainStep(nn.Module):
    """Forward pass and loss in one module, so that DDP sees every trainable parameter the step uses."""

    def __init__(self, model: VideoLMM) -> None:
        super().__init__()
        self.model = model

    def forward(self, clips: list[VideoFeatures], mos: list[float], weights: dict[str, float]) -> torch.Tensor:
        out = self.model.score_clips(clips)
        target = torch.tensor(mos, dtype=torch.float32, device=out.level_logits.device)
        level, reg = readout_losses(out, target, weights)
        return weights.get("levels", 0.0) * level + weights.get("regression", 0.0) * reg


@dataclass
class LoopResult:
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    total: int = 0

    @property
    def finished(self) -> bool:
        return self.steps >= self.total


def run_loop(model: VideoLMM, clips: StoredClips, cfg: Any, run: Path | None, accelerator: Any) -> LoopResult:
    """Train ``model`` on the stored clips as ``cfg`` (a ``VideoTrainConfig``) says, on this process's part of each
    batch. With a run folder, state is saved there and ``cfg.resume`` continues from it; ``cfg.stop_after`` stops
    early (state saved)."""
    acc = accelerator
    named = list(model.trainable_parameters())
    head = [p for n, p in named if n.startswith("heads.head.")]
    rest = [p for n, p in named if not n.startswith("heads.head.")]
    lr = cfg.learning_rate(int(model.config.hidden_size))
    opt = torch.optim.AdamW([{"params": rest, "lr": lr, "base": lr},
                             {"params": head, "lr": cfg.head_lr, "base": cfg.head_lr}], weight_decay=cfg.weight_decay)
    step_module = acc.prepare_model(VideoTrainStep(model), device_placement=False)
    opt = acc.prepare_optimizer(opt, device_placement=False)
    per_epoch = math.ceil(len(clips) / cfg.batch_size)
    total = per_epoch * cfg.epochs
    bounds = cfg.stage_bounds(total)
    stop_at = min(total, cfg.stop_after) if cfg.stop_after else total
    state_dir = run / STATE_DIR if run is not None else None
    res, epoch, batch_in_epoch = LoopResult(total=total), 0, 0
    acc.step = 0  # micro-steps done (the state's ``micro_steps``)
    if cfg.resume and state_dir is not None and (state_dir / STATE_FILE).is_file():
        saved = load_state(state_dir, model, opt, acc)
        res.steps, epoch, batch_in_epoch = saved.step, saved.epoch, saved.micro_in_epoch
        acc.step = saved.micro_steps
        res.history = _read_log(run, res.steps, acc)
        logger.info("video training: resumed at step %d of %d (epoch %d, batch %d)", res.steps, total, epoch,
                    batch_in_epoch)
    logger.info("video training: %d steps of %d clips on %d process(es), schedule %s, lr %.3g (head %.3g)", total,
                cfg.batch_size, acc.num_processes, cfg.schedule, lr, cfg.head_lr)
    while res.steps < stop_at:
        order = epoch_order(cfg.seed, epoch, len(clips))
        globals_ = [order[s:s + cfg.batch_size] for s in range(batch_in_epoch * cfg.batch_size, len(clips),
                                                                  cfg.batch_size)]
        parts = [local_part(b, acc.process_index, acc.num_processes) for b in globals_]
        with contextlib.closing(clips.batches([idx for idx, _ in parts])) as loaded:
            for (idx, weight), whole, feats in zip(parts, globals_, loaded):
                batch = (feats, [clips.mos[i] for i in idx], weight, len(whole))
                rec = _step(step_module, opt, named, batch, res.steps, bounds, cfg, acc)
                res.steps, acc.step = res.steps + 1, acc.step + 1
                batch_in_epoch += 1
                res.history.append(rec)
                if acc.is_main_process:
                    _append_log(run, rec)
                end = batch_in_epoch >= per_epoch
                if state_dir is not None and (end or res.steps % cfg.save_every == 0 or res.steps == stop_at):
                    save_state(state_dir, model, opt, acc, res.steps, epoch + end, 0 if end else batch_in_epoch)
                if res.steps >= stop_at:
                    break
        if batch_in_epoch >= per_epoch:
            epoch, batch_in_epoch = epoch + 1, 0
    if not res.finished:
        logger.info("video training stopped after %d of %d steps; continue with the same command and --resume",
                    res.steps, total)
    return res


def _step(step_module: nn.Module, opt: Any, named: list[tuple[str, nn.Parameter]],
          batch: tuple[list[VideoFeatures], list[float], float, int], step: int, bounds: list[int], cfg: Any,
          acc: Any) -> dict[str, float]:
    """One optimizer step on this process's part of a batch: ``(features, MOS, weight of its mean loss, clips in the
    whole batch)``; the record holds the whole batch's mean loss."""
    feats, mos, weight, clips = batch
    torch.manual_seed(step_seed(cfg.seed, step))
    stage = sum(step >= b for b in bounds[:-1])
    factor = lr_factor(step, bounds, cfg)  # reads warmup_ratio and lr_schedule
    for g in opt.param_groups:
        g["lr"] = g["base"] * factor
    opt.zero_grad(set_to_none=True)
    loss = step_module(feats, mos, cfg.stage_weights(stage)) * weight
    acc.backward(loss)
    if cfg.max_grad_norm:
        acc.clip_grad_norm_([p for _, p in named], cfg.max_grad_norm)
    opt.step()
    mean = acc.reduce(loss.detach(), reduction="mean") if acc.num_processes > 1 else loss.detach()
    return {"step": step, "loss": float(mean), "stage": stage + 1, "clips": clips}


def _append_log(run: Path | None, rec: dict[str, float]) -> None:
    if run is not None:
        with (run / LOG_NAME).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")


def _read_log(run: Path, steps: int, acc: Any) -> list[dict[str, float]]:
    """The log of the steps the saved state holds; later lines (steps a killed run did after its last save, to be
    taken again) are dropped from the file (by the main process, once every process has read it)."""
    path = run / LOG_NAME
    kept = []
    if not path.is_file():
        acc.wait_for_everyone()
        return kept
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] < steps:
            kept.append(rec)
    acc.wait_for_everyone()
    if acc.is_main_process:
        path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    return kept
