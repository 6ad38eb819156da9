"""Flow-GRPO adapter: ``fn(images, prompts, metadata, ref_images=None) -> ({"quality": ..., ..., "avg": ...}, {})``.

Flow-GRPO's trainers call reward functions of this shape (``flow_grpo/rewards.py``, ``multi_score``),
usually on a thread (``executor.submit(reward_fn, images, prompts, prompt_metadata, only_strict=...)``)
and read the ``"avg"`` entry as the reward. Their other rewards live on about 0..1, so this adapter
scales F-Eval's 0..100 by ``scale=0.01`` by default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .core import Weights, feval_reward, get_scorer, resolve_weights, weighted_dims

if TYPE_CHECKING:  # pragma: no cover
    from feval_core.scoring.scorer import FEvalScorer

FlowGRPOFn = Callable[..., tuple[dict[str, np.ndarray], dict[str, Any]]]


def flow_grpo_reward(
    scorer: FEvalScorer | str | Path | None = None,
    weights: Weights = None,
    *,
    scale: float = 0.01,
    ref_key: str = "ref",
    nan_reward: float = 0.0,
    batch_size: int = 8,
) -> FlowGRPOFn:
    """A Flow-GRPO reward function scoring with F-Eval.

    The returned ``fn(images, prompts, metadata, ref_images=None, **kwargs)`` gives
    ``({dim: float32 [B] for each weighted dim, "avg": float32 [B]}, {})``: per-dimension scores times
    ``scale`` (NaN where a dimension does not apply) and the weighted mean (NaN dimensions skipped,
    ``nan_reward`` when none applies). References come from ``ref_images`` (one per image or one for all)
    or else from ``metadata[i][ref_key]``. Extra keyword arguments (e.g. ``only_strict``) are ignored.
    """
    sc = get_scorer(scorer)
    w = resolve_weights(weights)
    dims = weighted_dims(w)

    def fn(images: Any, prompts: Sequence[str], metadata: Any = None, ref_images: Any = None,
           **_: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        refs = ref_images if ref_images is not None else _refs_from_metadata(metadata, ref_key)
        out = feval_reward(images, list(prompts), refs, w, sc, return_dict=True, nan_reward=nan_reward,
                           batch_size=batch_size)
        scores = {d: out[d].detach().cpu().numpy().astype(np.float32) * scale for d in dims}
        scores["avg"] = out["reward"].detach().cpu().numpy().astype(np.float32) * scale
        return scores, {}

    return fn


def _refs_from_metadata(metadata: Any, ref_key: str) -> list[Any] | None:
    if not isinstance(metadata, (list, tuple)) or not metadata:
        return None
    refs = [m.get(ref_key) if isinstance(m, dict) else None for m in metadata]
    return refs if any(r is not None for r in refs) else None
