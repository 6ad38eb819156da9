"""One training step: losses of each schedule, learning-rate factors, experts under gradient checkpointing.

Schedules (:data:`~feval_core.train.config.SCHEDULES`):

* ``levels`` (default): cross-entropy of the rating word (MOS binned into five equal bands over 0..100, best
  first) on the rating-word logits (Q-Align recipe);
* ``regression``: smooth-L1 (or L1/MSE) of the regression head against the MOS;
* ``two_stage``: ``levels`` for the first ``stage1_fraction`` of the steps, then ``regression`` (FVQ-Rater);
* ``joint``: both losses at every step.

Every schedule also trains the router (cross-entropy of question -> dimension, on the rows' evaluation prompts
and the training paraphrases of :mod:`feval_core.questions`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..dimensions import DIM_INDEX, LEVEL_WORDS
from ..errors import ConfigError
from ..model.vision import is_vision_module
from .config import TrainConfig


def level_targets(mos: torch.Tensor) -> torch.Tensor:
    """Index of the rating word of each MOS: five equal bands over 0..100 (``[80, 100]`` is ``excellent``,
    ``[60, 80)`` ``good``, ... ``[0, 20)`` ``bad``), best word first as in :data:`LEVEL_WORDS`."""
    n = len(LEVEL_WORDS)
    band = torch.div(mos.float().clamp(0.0, 100.0), 100.0 / n, rounding_mode="floor").clamp(max=n - 1)
    return (n - 1 - band).long()


def readout_losses(out: Any, mos: torch.Tensor, weights: dict[str, float], loss: str = "smooth_l1"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(level, regression)`` losses of a model output (zero where its weight is 0): cross-entropy of the
    rating word of each MOS, and ``loss`` of the regression head on MOS/100."""
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
    return level, reg


def score_batch(model: Any, batch: Any, by_expert: bool = True) -> Any:
    """The model's output on a :class:`~feval_core.train.data.TrainBatch`, through the path scoring takes
    (vision once per image or per vision expert, experts on their rows); one LLM pass in row order."""
    return model.score_rows(batch.rows, batch.prepared_by_id(), bucket=False, by_expert=by_expert)


class TrainStep(nn.Module):
    """Forward pass and losses in one module, so data-parallel wrappers see every trainable parameter used."""

    def __init__(self, model: Any, router_examples: tuple[list[str], list[str]] = ([], [])) -> None:
        super().__init__()
        self.model = model
        texts, dims = router_examples  # paraphrases the router also learns from at every step
        self.router_texts = list(texts)
        self.register_buffer("router_targets", torch.tensor([DIM_INDEX[d] for d in dims], dtype=torch.long),
                             persistent=False)

    def forward(self, batch: Any, mos: torch.Tensor, prompts: list[str], weights: dict[str, float],
                loss: str = "smooth_l1", by_expert: bool = True) -> dict[str, torch.Tensor]:
        out = score_batch(self.model, batch, by_expert)
        level, reg = readout_losses(out, mos, weights, loss)
        targets = torch.cat([batch.dim_idx.to(mos.device), self.router_targets.to(mos.device)])
        router = nn.functional.cross_entropy(self.model.route(list(prompts) + self.router_texts).float(), targets)
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
               for name, m in backbone.named_modules() if isinstance(m, LoraLayer) and not is_vision_module(name)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def enable_gradient_checkpointing(model: Any) -> None:
    """Checkpoint the backbone's layers while it stays in eval mode (PEFT refuses per-row experts in training).

    transformers only checkpoints layers whose ``training`` flag is set, so the flag is set on the
    checkpointed layers alone (not their sub-modules: dropout and friends stay in eval mode), and only in the
    language model: vision experts are applied for the length of one tower run, which a recomputation during
    the backward pass would miss.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    base = model.base_model
    enable = getattr(base, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # pragma: no cover - older transformers
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    n = 0
    for name, m in base.named_modules():
        if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing and not is_vision_module(name):
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
