"""TRL ``DDPOTrainer`` adapter (trl <= 0.23.1): ``(images, prompts, prompt_metadata) -> (rewards, metadata)``.

Reference faces travel in ``prompt_metadata`` (what ``prompt_fn`` returns next to each prompt), under
``ref_key`` (``"ref"`` by default). With ``DDPOConfig(async_reward_computation=True)`` the trainer calls
``.result()`` on what the reward function returns, so build the reward with the same flag: it then
returns two ``concurrent.futures.Future`` objects and scores on its own worker thread.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .core import ReasonLog, Weights, feval_reward, get_scorer, resolve_weights, weighted_dims

if TYPE_CHECKING:  # pragma: no cover
    from feval_core.scoring.scorer import FEvalScorer

logger = logging.getLogger(__name__)


class DDPOReward:
    """The callable :func:`ddpo_reward` returns. ``close()`` stops its worker thread (async mode)."""

    def __init__(self, scorer: FEvalScorer | str | Path | None, weights: Weights, *, ref_key: str,
                 async_reward_computation: bool, max_workers: int, nan_reward: float, batch_size: int,
                 faces_required: bool = True, device: str | None = None) -> None:
        self.scorer = get_scorer(scorer, device=device)  # load now, on this process's device, not in a training step
        self.faces_required = faces_required
        self.reasons = ReasonLog()
        self.weights = resolve_weights(weights)
        self.ref_key = ref_key
        self.async_reward_computation = bool(async_reward_computation)
        self.nan_reward = nan_reward
        self.batch_size = batch_size
        self._executor = (ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="feval-ddpo-reward")
                          if self.async_reward_computation else None)

    def refs_from(self, prompt_metadata: Sequence[Any] | None, n: int) -> list[Any] | None:
        """One reference per image from ``prompt_metadata[i][ref_key]`` (None where absent)."""
        if not prompt_metadata:
            return None
        metas = list(prompt_metadata)
        if len(metas) != n:
            raise ValueError(f"got {n} images but {len(metas)} prompt_metadata entries; DDPO passes one per image")
        refs = [m.get(self.ref_key) if isinstance(m, dict) else None for m in metas]
        return refs if any(r is not None for r in refs) else None

    def compute(self, images: Any, prompts: Sequence[str], prompt_metadata: Sequence[Any] | None = None
                ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Score now: ``(rewards [B], {"quality": [B], ..., "faces", "warnings", "missing"})``: the weighted
        dimensions (a failed one 0, NaN where not scored), face counts, and per image why a score is missing."""
        n = len(prompts)
        out = feval_reward(images, list(prompts), self.refs_from(prompt_metadata, n), self.weights, self.scorer,
                           return_dict=True, nan_reward=self.nan_reward, batch_size=self.batch_size,
                           faces_required=self.faces_required, reason_log=self.reasons)
        meta: dict[str, Any] = {d: out[d].cpu() for d in weighted_dims(self.weights)}
        for key in ("faces", "warnings", "missing"):
            meta[key] = out[key]
        return out["reward"], meta

    def __call__(self, images: Any, prompts: Sequence[str], prompt_metadata: Sequence[Any] | None = None) -> Any:
        if self._executor is None:
            return self.compute(images, prompts, prompt_metadata)
        if isinstance(images, torch.Tensor):
            images = images.detach()  # the trainer may go on; keep this batch as it is now
        job = self._executor.submit(self.compute, images, prompts, prompt_metadata)
        rewards: Future = Future()
        metadata: Future = Future()

        def _split(done: Future) -> None:
            exc = done.exception()
            if exc is not None:
                rewards.set_exception(exc)
                metadata.set_exception(exc)
            else:
                r, m = done.result()
                rewards.set_result(r)
                metadata.set_result(m)

        job.add_done_callback(_split)
        return rewards, metadata

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)


def ddpo_reward(
    scorer: FEvalScorer | str | Path | None = None,
    weights: Weights = None,
    *,
    ref_key: str = "ref",
    async_reward_computation: bool = False,
    max_workers: int = 1,
    nan_reward: float = 0.0,
    batch_size: int = 8,
    faces_required: bool = True,
    device: str | None = None,
) -> DDPOReward:
    """A ``reward_function`` for ``trl.DDPOTrainer``.

    Pass ``async_reward_computation=config.async_reward_computation`` so the return type matches what the
    trainer expects (a tuple of tensors/dicts, or of futures). Rewards are on 0..100: DDPO standardises
    them into advantages, so the scale does not matter there. The rule is :func:`~reward.core.feval_reward`'s
    (a faceless image gets the floor unless ``faces_required=False``); a scorer loaded from a path goes to this
    process's device (``accelerate launch``: its own GPU) unless ``device`` says otherwise.
    """
    return DDPOReward(scorer, weights, ref_key=ref_key, async_reward_computation=async_reward_computation,
                      max_workers=max_workers, nan_reward=nan_reward, batch_size=batch_size,
                      faces_required=faces_required, device=device)


def ddpo_prompt_fn(prompts: Sequence[str], refs: Any = None, *, ref_key: str = "ref",
                   seed: int = 0) -> Callable[[], tuple[str, dict[str, Any]]]:
    """A ``prompt_function`` for ``DDPOTrainer``: a random (seeded) prompt with its reference face in the metadata.

    ``refs``: one per prompt, or one for all (e.g. the identity being fine-tuned), or None.
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty; give at least one prompt")
    ref_list = list(refs) if isinstance(refs, (list, tuple)) else [refs] * len(prompts)
    if len(ref_list) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(ref_list)} refs; pass one ref per prompt or one for all")
    rng = random.Random(seed)

    def prompt_fn() -> tuple[str, dict[str, Any]]:
        i = rng.randrange(len(prompts))
        return prompts[i], {ref_key: ref_list[i]}

    return prompt_fn


__all__ = ["DDPOReward", "ddpo_prompt_fn", "ddpo_reward"]
