"""Rewards from F-Eval's four dimensions for face generators: preference fine-tuning and best-of-N.

``feval_reward`` is the one scoring path; the rest are thin shapes around it:

* :func:`feval_reward` — ``float32 [B]`` weighted reward (0..100) from images, prompts and reference faces;
* :func:`ddpo_reward` — TRL ``DDPOTrainer`` reward function (sync or ``async_reward_computation``);
* :func:`flow_grpo_reward` — Flow-GRPO multi-score reward function;
* :func:`best_of_n` — best ``k`` of ``n`` seeded candidates from a diffusers pipeline;
* :func:`build_dpo_pairs` — Diffusion-DPO preference pairs (``jpg_0``, ``jpg_1``, ``label_0``, ``caption``);
* :class:`DifferentiableReward` — the same reward with gradients w.r.t. the pixels (ReFL, DRaFT, AlignProp).

The default scorer comes from ``$FEVAL_REWARD_MODEL`` (checkpoint folder or hub id) on ``$FEVAL_REWARD_DEVICE``.
"""

from __future__ import annotations

from .best_of_n import BestOfN, best_of_n, regenerate
from .core import (
    DEVICE_ENV,
    MODEL_ENV,
    feval_reward,
    get_scorer,
    resolve_weights,
    weighted_reward,
)
from .ddpo import DDPOReward, ddpo_prompt_fn, ddpo_reward
from .differentiable import (
    DifferentiableReward,
    differentiable_dims,
    differentiable_reward,
)
from .dpo import DPOPairs, build_dpo_pairs
from .flow_grpo import flow_grpo_reward

__all__ = [
    "DEVICE_ENV",
    "MODEL_ENV",
    "BestOfN",
    "DDPOReward",
    "DPOPairs",
    "DifferentiableReward",
    "best_of_n",
    "build_dpo_pairs",
    "ddpo_prompt_fn",
    "ddpo_reward",
    "differentiable_dims",
    "differentiable_reward",
    "feval_reward",
    "flow_grpo_reward",
    "get_scorer",
    "regenerate",
    "resolve_weights",
    "weighted_reward",
]
