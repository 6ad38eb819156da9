"""Flow-GRPO adapter: ``fn(images, prompts, metadata, ref_images=None, only_strict=True) -> (scores, metadata)``.

Flow-GRPO's trainers build their reward with ``flow_grpo.rewards.multi_score(accelerator.device, config.reward_fn)``
and call it on a thread (``executor.submit(reward_fn, images, prompts, prompt_metadata, only_strict=True)``); they
turn every key of the scores into ``torch.as_tensor(v).float()``, take advantages from ``"avg"`` and log the mean of
each key. :func:`multi_score` has that signature (F-Eval's dimensions as its score names), so a training script
changes one import; :func:`flow_grpo_reward` is the same function with every option.

Scores are scaled to about 0..1 like Flow-GRPO's other rewards (``scale=0.01``). ``"avg"`` is the reward of
:func:`~reward.core.feval_reward` (the weighted **mean**, never NaN: a faceless image gets the floor 0, an
unreadable one ``nan_reward``); Flow-GRPO's own ``multi_score`` sums ``weight * score``, which is the same number
when the weights add up to 1. A per-dimension key holds the dimension's score (0 where the image failed it: no face
next to a usable reference); where the dimension does not apply (no reference, no prompt, unreadable image) it
holds ``na_fill``: by default the mean of that key over the images of the call where it applies (0 when it applies
to none), so the mean a trainer logs is the mean where the dimension applies and never NaN. The metadata says, per
image, what was filled and why (``missing``, ``warnings``), and each distinct reason is logged once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from feval_core.dimensions import DIMENSIONS, parse_dims

from .core import ReasonLog, Weights, feval_reward, get_scorer, resolve_weights, weighted_dims

if TYPE_CHECKING:  # pragma: no cover
    from feval_core.scoring.scorer import FEvalScorer

FlowGRPOFn = Callable[..., tuple[dict[str, np.ndarray], dict[str, Any]]]
NA_FILL_BATCH_MEAN = "batch_mean"


def flow_grpo_reward(
    scorer: FEvalScorer | str | Path | None = None,
    weights: Weights = None,
    *,
    scale: float = 0.01,
    ref_key: str = "ref",
    nan_reward: float = 0.0,
    batch_size: int = 8,
    faces_required: bool = True,
    device: str | torch.device | None = None,
    na_fill: str | float = NA_FILL_BATCH_MEAN,
) -> FlowGRPOFn:
    """A Flow-GRPO reward function scoring with F-Eval.

    The returned ``fn(images, prompts, metadata, ref_images=None, only_strict=True)`` gives
    ``({dim: float32 [B] for each weighted dim, "avg": float32 [B]}, {"faces", "warnings", "missing"})`` (see the
    module doc for the values). References come from ``ref_images`` (one per image or one for all) or else from
    ``metadata[i][ref_key]``. ``device``: where a scorer loaded from a path goes (default: this process's device).
    ``na_fill``: ``"batch_mean"`` or a number (e.g. ``float("nan")`` to keep NaN).
    """
    if not (na_fill == NA_FILL_BATCH_MEAN or isinstance(na_fill, (int, float))):
        raise ValueError(f"na_fill must be {NA_FILL_BATCH_MEAN!r} or a number, got {na_fill!r}")
    sc = get_scorer(scorer, device=device)
    w = resolve_weights(weights)
    dims = weighted_dims(w)
    log = ReasonLog()

    def fn(images: Any, prompts: Sequence[str], metadata: Any = None, ref_images: Any = None,
           only_strict: bool = True, **_: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        refs = ref_images if ref_images is not None else _refs_from_metadata(metadata, ref_key)
        out = feval_reward(images, list(prompts), refs, w, sc, return_dict=True, nan_reward=nan_reward,
                           batch_size=batch_size, faces_required=faces_required, reason_log=log)
        scores = {d: fill_not_applicable(out[d].detach().cpu().numpy().astype(np.float32) * scale, na_fill)
                  for d in dims}
        scores["avg"] = out["reward"].detach().cpu().numpy().astype(np.float32) * scale
        return scores, {"faces": out["faces"], "warnings": out["warnings"],
                        "missing": [{d: m[d] for d in dims if d in m} for m in out["missing"]]}

    return fn


def multi_score(device: str | torch.device | None, score_dict: Mapping[str, float]) -> FlowGRPOFn:
    """Flow-GRPO's ``multi_score(device, score_dict)`` for F-Eval: ``score_dict`` maps F-Eval dimensions
    (``quality``, ``authenticity``, ``identity``, ``correspondence``; aliases such as ``id`` work) to weights;
    the model is ``$FEVAL_REWARD_MODEL`` (a checkpoint, hub id or reward server URL), loaded on ``device``
    (Flow-GRPO passes ``accelerator.device``). Swap ``flow_grpo.rewards`` for ``reward.flow_grpo`` in the script::

        from reward import flow_grpo as rewards   # was: import flow_grpo.rewards ... flow_grpo.rewards.multi_score
        reward_fn = rewards.multi_score(accelerator.device, {"quality": 0.5, "identity": 0.5})
    """
    if not isinstance(score_dict, Mapping) and hasattr(score_dict, "__dict__"):
        score_dict = dict(vars(score_dict))  # ml_collections / SimpleNamespace configs
    if not isinstance(score_dict, Mapping) or not score_dict:
        raise ValueError(f"score_dict must map F-Eval dimensions ({', '.join(DIMENSIONS)}) to weights, got "
                         f"{score_dict!r}")
    weights: dict[str, float] = {}
    for name, weight in score_dict.items():
        try:
            (dim,) = parse_dims([str(name)])
        except ValueError:
            raise ValueError(f"{name!r} is not an F-Eval score; reward.flow_grpo.multi_score scores "
                             f"{', '.join(DIMENSIONS)}. Keep Flow-GRPO's own multi_score for its other rewards"
                             ) from None
        weights[dim] = float(weight)
    return flow_grpo_reward(None, weights, device=None if device is None else str(device))


def fill_not_applicable(values: np.ndarray, na_fill: str | float = NA_FILL_BATCH_MEAN) -> np.ndarray:
    """``values`` with NaN entries replaced: by the mean of the finite ones (0 when there are none) for
    ``"batch_mean"``, else by the number ``na_fill``."""
    nan = np.isnan(values)
    if not nan.any():
        return values
    if na_fill == NA_FILL_BATCH_MEAN:
        fill = float(values[~nan].mean()) if (~nan).any() else 0.0
    else:
        fill = float(na_fill)
    out = values.copy()
    out[nan] = fill
    return out


def _refs_from_metadata(metadata: Any, ref_key: str) -> list[Any] | None:
    if not isinstance(metadata, (list, tuple)) or not metadata:
        return None
    refs = [m.get(ref_key) if isinstance(m, dict) else None for m in metadata]
    return refs if any(r is not None for r in refs) else None


__all__ = ["fill_not_applicable", "flow_grpo_reward", "multi_score"]
