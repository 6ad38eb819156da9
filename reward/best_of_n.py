"""Best-of-N over any diffusers text-to-image pipeline: N seeded candidates, scored in batches, best k kept.

Every candidate has its own ``torch.Generator`` seeded with its own seed, so any candidate can be
regenerated alone with :func:`regenerate` (same prompt, seed and pipeline arguments). Only the best
``k`` images are kept in memory while the others are scored and dropped.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from feval_core.dimensions import DIMENSIONS

from .core import Weights, feval_reward, get_scorer, resolve_weights

if TYPE_CHECKING:  # pragma: no cover
    from feval_core.scoring.scorer import FEvalScorer

logger = logging.getLogger(__name__)


@dataclass
class BestOfN:
    """What :func:`best_of_n` found: the best ``k`` images, best first, and every candidate's scores."""

    images: list[Any] = field(repr=False)  # the k best, as the pipeline gives them (PIL, [C,H,W] tensor, [H,W,C] array)
    seeds: list[int]  # their seeds: regenerate(pipe, prompt, seeds[i], **pipe_kwargs) gives images[i] again
    rewards: list[float]  # their weighted rewards
    indices: list[int]  # their candidate numbers (0..n-1)
    all_seeds: list[int] = field(repr=False)  # every candidate's seed, in generation order
    all_rewards: torch.Tensor = field(repr=False)  # [n] weighted reward per candidate (NaN: nothing scored)
    all_scores: torch.Tensor = field(repr=False)  # [n, 4] per-dimension scores (NaN where not scored)
    prompt: str = ""
    pipe_kwargs: dict[str, Any] = field(default_factory=dict, repr=False)

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready row per candidate: seed, reward, the four scores (``None`` = not scored)."""
        rows = []
        for i, s in enumerate(self.all_seeds):
            row: dict[str, Any] = {"candidate": i, "seed": s, "reward": _num(self.all_rewards[i])}
            row.update({d: _num(self.all_scores[i, j]) for j, d in enumerate(DIMENSIONS)})
            rows.append(row)
        return rows


def _num(v: torch.Tensor) -> float | None:
    x = float(v)
    return None if math.isnan(x) else x


def candidate_seeds(seed: int | Sequence[int], n: int) -> list[int]:
    """``n`` seeds: ``seed, seed+1, ...`` for an int, or the given list (which must hold ``n`` seeds)."""
    if isinstance(seed, (int, np.integer)):
        return [int(seed) + i for i in range(n)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for n={n} candidates; pass one seed per candidate or one int")
    return seeds


def make_generators(seeds: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One ``torch.Generator`` per seed (on ``device``; CPU generators give the same images on any GPU)."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def regenerate(pipe: Any, prompt: str, seed: int, *, generator_device: str | torch.device = "cpu",
               **pipe_kwargs: Any) -> Any:
    """The one image ``pipe`` makes for ``prompt`` with ``seed`` (as :func:`best_of_n` made it)."""
    out = pipe(prompt=[prompt], generator=make_generators([seed], generator_device), **pipe_kwargs)
    return _split_images(out.images)[0]


def _split_images(images: Any) -> list[Any]:
    if isinstance(images, (torch.Tensor, np.ndarray)):
        return [images[i] for i in range(images.shape[0])]
    return list(images)


def generate_candidates(pipe: Any, prompt: str, seeds: Sequence[int], *, batch_size: int = 4,
                        generator_device: str | torch.device = "cpu", **pipe_kwargs: Any
                        ) -> Iterator[tuple[list[int], list[Any]]]:
    """Yield ``(seeds, images)`` batches: ``pipe`` run on ``batch_size`` copies of ``prompt``, one generator each."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for key in ("generator", "latents", "num_images_per_prompt", "prompt"):
        if key in pipe_kwargs:
            raise ValueError(f"best-of-N sets {key!r} itself (one seeded generator per candidate); leave it out")
    for start in range(0, len(seeds), batch_size):
        chunk = list(seeds[start:start + batch_size])
        out = pipe(prompt=[prompt] * len(chunk), generator=make_generators(chunk, generator_device), **pipe_kwargs)
        images = _split_images(out.images)
        if len(images) != len(chunk):
            raise RuntimeError(f"pipeline returned {len(images)} images for {len(chunk)} prompts")
        yield chunk, images


def best_of_n(
    pipe: Any,
    prompt: str,
    n: int,
    k: int = 1,
    ref: Any = None,
    seed: int | Sequence[int] = 0,
    weights: Weights = None,
    *,
    scorer: FEvalScorer | str | Path | None = None,
    batch_size: int = 4,
    generator_device: str | torch.device = "cpu",
    faces_required: bool = True,
    device: str | torch.device | None = None,
    **pipe_kwargs: Any,
) -> BestOfN:
    """Generate ``n`` candidates of ``prompt`` with ``pipe`` and keep the ``k`` with the highest F-Eval reward.

    ``seed``: the first seed (candidates use ``seed + i``) or a list of ``n`` seeds. ``ref``: reference face
    for identity. ``pipe_kwargs`` go to every pipeline call (``num_inference_steps``, ``guidance_scale``,
    ``height``, ``output_type``, ...). The reward is :func:`~reward.core.feval_reward`'s: a candidate without a
    face gets the floor (0) unless ``faces_required=False``, and with ``ref`` a candidate whose face is gone scores
    identity 0. Candidates whose reward is NaN rank last; ties keep generation order. ``device``: where a scorer
    loaded from a path goes (default: this process's device).
    """
    if n < 1 or not 1 <= k <= n:
        raise ValueError(f"need n >= 1 and 1 <= k <= n, got n={n}, k={k}")
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be one string, got {type(prompt).__name__}; call best_of_n once per prompt")
    seeds = candidate_seeds(seed, n)
    w = resolve_weights(weights)
    sc = get_scorer(scorer, device=device)
    heap: list[tuple[float, int, Any]] = []  # min-heap of (rank key, -index, image): the k best so far
    rewards = torch.full((n,), float("nan"))
    scores = torch.full((n, len(DIMENSIONS)), float("nan"))
    done = 0
    for chunk, images in generate_candidates(pipe, prompt, seeds, batch_size=batch_size,
                                             generator_device=generator_device, **pipe_kwargs):
        out = feval_reward(images, [prompt] * len(images), ref, w, sc, return_dict=True, batch_size=len(images),
                           faces_required=faces_required)
        r = out["reward"].detach().float().cpu()
        rewards[done:done + len(images)] = r
        scores[done:done + len(images)] = out["result"].scores
        for j, img in enumerate(images):
            key = float(r[j]) if not math.isnan(float(r[j])) else -math.inf
            item = (key, -(done + j), img)
            if len(heap) < k:
                heapq.heappush(heap, item)
            elif item[:2] > heap[0][:2]:
                heapq.heapreplace(heap, item)
        done += len(images)
        logger.debug("best-of-%d: %d/%d candidates scored", n, done, n)
    best = sorted(heap, key=lambda t: t[:2], reverse=True)
    idx = [-t[1] for t in best]
    return BestOfN(images=[t[2] for t in best], seeds=[seeds[i] for i in idx], rewards=[float(rewards[i]) for i in idx],
                   indices=idx, all_seeds=seeds, all_rewards=rewards, all_scores=scores, prompt=prompt,
                   pipe_kwargs=dict(pipe_kwargs))
