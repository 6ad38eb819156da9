"""Rewards from F-Eval's four dimensions for face generators: preference fine-tuning and best-of-N.

``feval_reward`` is the one scoring path; the rest are thin shapes around it:

* :func:`feval_reward` — ``float32 [B]`` weighted reward (0..100) from images, prompts and reference faces;
* :func:`ddpo_reward` — TRL ``DDPOTrainer`` reward function (sync or ``async_reward_computation``);
* :func:`flow_grpo_reward` — Flow-GRPO multi-score reward function;
* :func:`best_of_n` — best ``k`` of ``n`` seeded candidates from a diffusers pipeline;
* :func:`build_dpo_pairs` — Diffusion-DPO preference pairs (``jpg_0``, ``jpg_1``, ``label_0``, ``caption``);
* :class:`DifferentiableReward` — the same reward with gradients w.r.t. the pixels (ReFL, DRaFT, AlignProp);
* :func:`remote_reward` — the same shapes scored by a ``feval serve`` server (retries, timeouts).

One rule in every shape (:func:`feval_core.scoring.result.judged_mean`): a face lost next to a reference scores
identity 0, a faceless image gets the floor unless ``faces_required=False``. The default scorer comes from
``$FEVAL_REWARD_MODEL`` (checkpoint folder, hub id or server URL), on this process's device (``accelerate launch``:
each process its own GPU) unless ``device=`` or ``$FEVAL_REWARD_DEVICE`` says otherwise.
"""

from __future__ import annotations

from .best_of_n import BestOfN, best_of_n, regenerate
from .core import (
    DEVICE_ENV,
    MODEL_ENV,
    ReasonLog,
    feval_reward,
    get_scorer,
    process_device,
    resolve_device,
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
from .flow_grpo import flow_grpo_reward, multi_score
from .remote import RemoteReward, RemoteRewardError, RemoteScorer, remote_reward

__all__ = [
    "DEVICE_ENV",
    "MODEL_ENV",
    "BestOfN",
    "DDPOReward",
    "DPOPairs",
    "ReasonLog",
    "RemoteReward",
    "RemoteRewardError",
    "RemoteScorer",
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
    "multi_score",
    "process_device",
    "regenerate",
    "remote_reward",
    "resolve_device",
    "resolve_weights",
    "weighted_reward",
]
