"""The video trainer's optimizer steps, resumable: the image trainer's schedule (width-scaled lr, warm-up and decay
per stage, clipped gradients) and its saved state (:mod:`feval_core.train.state`: trainable weights, optimizer,
RNGs and position as safetensors and JSON in ``<run>/state/``, written atomically every ``save_every`` steps, at
each epoch's end and where ``stop_after`` stops the run).

A resumed run takes the same steps as an uninterrupted one: the clip order of epoch ``e`` is the ``e``-th
permutation drawn from ``seed`` (replayed, not stored), and torch's generator is seeded per step from
``(seed, step)``.
"""

from __future__ import annotations

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

logger = logging.getLogger(__name__)

LOG_NAME = "train_log.jsonl"


class LocalProcess:
    """What :mod:`feval_core.train.state` asks of accelerate's ``Accelerator``, for one process (video training
    is not data parallel)."""

    is_main_process = True
    process_index = 0
    num_processes = 1

    def __init__(self) -> None:
        self.step = 0  # micro-steps done (the state's ``micro_steps``)

    def wait_for_everyone(self) -> None:
        return None


def step_seed(seed: int, step: int) -> int:
    """Torch's seed for optimizer step ``step`` of a run seeded ``seed``."""
    return (int(seed) * 1_000_003 + int(step)) % (2**63 - 1)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The clip order of ``epoch``: the ``epoch``-th permutation of one generator seeded ``seed``."""
    rng = np.random.default_rng(seed)
    for _ in range(epoch):
        rng.permutation(n)
    return rng.permutation(n)


@dataclass
class LoopResult:
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    total: int = 0

    @property
    def finished(self) -> bool:
        return self.steps >= self.total


def run_loop(model: VideoLMM, data: Sequence[tuple[VideoFeatures, float]], cfg: Any,
             run: Path | None = None) -> LoopResult:
    """Train ``model`` on (features, MOS) pairs as ``cfg`` (a ``VideoTrainConfig``) says. With a run folder, state
    is saved there and ``cfg.resume`` continues from it; ``cfg.stop_after`` stops early (state saved)."""
    named = list(model.trainable_parameters())
    head = [p for n, p in named if n.startswith("heads.head.")]
    rest = [p for n, p in named if not n.startswith("heads.head.")]
    lr = cfg.learning_rate(int(model.config.hidden_size))
    opt = torch.optim.AdamW([{"params": rest, "lr": lr, "base": lr},
                             {"params": head, "lr": cfg.head_lr, "base": cfg.head_lr}], weight_decay=cfg.weight_decay)
    per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = per_epoch * cfg.epochs
    bounds = cfg.stage_bounds(total)
    stop_at = min(total, cfg.stop_after) if cfg.stop_after else total
    proc, state_dir = LocalProcess(), (run / STATE_DIR if run is not None else None)
    res, epoch, batch_in_epoch = LoopResult(total=total), 0, 0
    if cfg.resume and state_dir is not None and (state_dir / STATE_FILE).is_file():
        saved = load_state(state_dir, model, opt, proc)
        res.steps, epoch, batch_in_epoch = saved.step, saved.epoch, saved.micro_in_epoch
        res.history = _read_log(run, res.steps)
        logger.info("video training: resumed at step %d of %d (epoch %d, batch %d)", res.steps, total, epoch,
                    batch_in_epoch)
    logger.info("video training: %d steps, schedule %s, lr %.3g (head %.3g)", total, cfg.schedule, lr, cfg.head_lr)
    while res.steps < stop_at:
        order = epoch_order(cfg.seed, epoch, len(data))
        for s in range(batch_in_epoch * cfg.batch_size, len(data), cfg.batch_size):
            rec = _step(model, opt, named, [data[i] for i in order[s:s + cfg.batch_size]], res.steps, bounds, cfg)
            res.steps, proc.step = res.steps + 1, proc.step + 1
            batch_in_epoch += 1
            res.history.append(rec)
            _append_log(run, rec)
            end = batch_in_epoch >= per_epoch
            if state_dir is not None and (end or res.steps % cfg.save_every == 0 or res.steps == stop_at):
                save_state(state_dir, model, opt, proc, res.steps, epoch + end, 0 if end else batch_in_epoch)
            if res.steps >= stop_at:
                break
        if batch_in_epoch >= per_epoch:
            epoch, batch_in_epoch = epoch + 1, 0
    if not res.finished:
        logger.info("video training stopped after %d of %d steps; continue with the same command and --resume",
                    res.steps, total)
    return res


def _step(model: VideoLMM, opt: torch.optim.Optimizer, named: list[tuple[str, nn.Parameter]],
          batch: list[tuple[VideoFeatures, float]], step: int, bounds: list[int], cfg: Any) -> dict[str, float]:
    torch.manual_seed(step_seed(cfg.seed, step))
    stage = sum(step >= b for b in bounds[:-1])
    out = model.score_clips([f for f, _ in batch])
    mos = torch.tensor([m for _, m in batch], dtype=torch.float32, device=out.level_logits.device)
    weights = cfg.stage_weights(stage)
    level, reg = readout_losses(out, mos, weights)
    loss = weights.get("levels", 0.0) * level + weights.get("regression", 0.0) * reg
    factor = lr_factor(step, bounds, cfg)  # reads warmup_ratio and lr_schedule
    for g in opt.param_groups:
        g["lr"] = g["base"] * factor
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.max_grad_norm:
        nn.utils.clip_grad_norm_([p for _, p in named], cfg.max_grad_norm)
    opt.step()
    return {"step": step, "loss": float(loss.detach()), "stage": stage + 1}


def _append_log(run: Path | None, rec: dict[str, float]) -> None:
    if run is not None:
        with (run / LOG_NAME).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")


def _read_log(run: Path, steps: int) -> list[dict[str, float]]:
    """The log of the steps the saved state holds; later lines (steps a killed run did after its last save, to be
    taken again) are dropped from the file."""
    path = run / LOG_NAME
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] < steps:
            kept.append(rec)
    path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    return kept
