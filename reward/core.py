"""``feval_reward``: one weighted reward per image from F-Eval's four dimensions.

The reward of image ``i`` is the weighted mean of its scores over the dimensions with a positive weight
that could be scored for it::

    reward_i = sum_d w_d * s_id / sum_d w_d      (d: w_d > 0 and s_id is not NaN)

so it stays on F-Eval's 0..100 scale, and a dimension that does not apply to an image (no reference
-> identity, no prompt -> correspondence, no face -> zero-shot identity) is left out of that image's
mean instead of counting as 0. An image with **no** scored weighted dimension gets ``nan_reward``
(default 0.0, the bottom of the scale, with a logged warning); pass ``nan_reward=float("nan")`` to
keep NaN and filter yourself.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from feval_core.dimensions import DIMENSIONS, parse_dims
from feval_core.scoring.result import weighted_mean

if TYPE_CHECKING:  # pragma: no cover
    from feval_core.scoring.result import ScoreResult
    from feval_core.scoring.scorer import FEvalScorer

logger = logging.getLogger(__name__)

MODEL_ENV = "FEVAL_REWARD_MODEL"
"""Environment variable naming the default scorer's checkpoint (folder or hub id)."""
DEVICE_ENV = "FEVAL_REWARD_DEVICE"
"""Environment variable naming the default scorer's device (``cuda``, ``cuda:1``, ``cpu``)."""
FIQA_ENV = "FEVAL_REWARD_FIQA"
"""Environment variable naming the default ViT-FIQA model folder (for a ``utility`` weight)."""
UTILITY = "utility"

Weights = Mapping[str, float] | Sequence[float] | None

_SCORERS: dict[tuple[str, str], FEvalScorer] = {}
_SCORERS_LOCK = threading.Lock()


def get_scorer(scorer: FEvalScorer | str | Path | None = None, *, device: str | None = None) -> FEvalScorer:
    """The scorer to use: ``scorer`` itself, a checkpoint path/hub id loaded once per process, or, with
    ``None``, the checkpoint named by ``$FEVAL_REWARD_MODEL`` on ``$FEVAL_REWARD_DEVICE``.

    Loaded scorers are cached (one per checkpoint and device) and shared: a scorer is thread-safe.
    """
    if scorer is not None and not isinstance(scorer, (str, Path)):
        if not hasattr(scorer, "score"):
            raise TypeError(f"scorer must be a FEvalScorer, a checkpoint path or a hub id, got {type(scorer).__name__}")
        return scorer
    source = scorer if scorer is not None else os.environ.get(MODEL_ENV)
    if not source:
        raise RuntimeError(
            f"no F-Eval scorer given: pass scorer=FEvalScorer.from_pretrained(...) (or a checkpoint path), or set "
            f"{MODEL_ENV} to a checkpoint folder or hub id (and optionally {DEVICE_ENV}=cuda:0)")
    from feval_core.scoring.scorer import FEvalScorer, default_device

    dev = str(device or os.environ.get(DEVICE_ENV) or default_device())
    key = (str(source), dev)
    with _SCORERS_LOCK:  # one load even when several reward threads start at once
        if key not in _SCORERS:
            logger.info("loading F-Eval reward model %s on %s", source, dev)
            _SCORERS[key] = FEvalScorer.from_pretrained(source, device=dev)
        return _SCORERS[key]


_FIQA: dict[tuple[str, str], Any] = {}


def get_fiqa_scorer(fiqa: Any = None, *, device: str | None = None) -> Any:
    """The ViT-FIQA scorer for a ``utility`` weight: ``fiqa`` itself, a model folder loaded once per process, or,
    with ``None``, the folder named by ``$FEVAL_REWARD_FIQA``."""
    if fiqa is not None and not isinstance(fiqa, (str, Path)):
        return fiqa
    source = fiqa if fiqa is not None else os.environ.get(FIQA_ENV)
    if not source:
        raise RuntimeError(f"a 'utility' weight needs a ViT-FIQA model: pass fiqa=FIQAScorer.from_pretrained(...) (or "
                           f"a model folder), or set {FIQA_ENV}")
    from feval_core.fiqa.scorer import FIQAScorer
    from feval_core.scoring.scorer import default_device

    dev = str(device or os.environ.get(DEVICE_ENV) or default_device())
    with _SCORERS_LOCK:
        if (str(source), dev) not in _FIQA:
            _FIQA[(str(source), dev)] = FIQAScorer.from_pretrained(source, device=dev)
        return _FIQA[(str(source), dev)]


def split_utility(weights: Weights) -> tuple[Weights, float]:
    """``weights`` without a ``"utility"`` key, and that key's weight (0 when absent)."""
    if not isinstance(weights, Mapping) or UTILITY not in weights:
        return weights, 0.0
    rest = {k: v for k, v in weights.items() if k != UTILITY}
    w = float(weights[UTILITY])
    if not math.isfinite(w) or w < 0:
        raise ValueError(f"the utility weight must be finite and >= 0, got {weights[UTILITY]!r}")
    return rest, w


def resolve_weights(weights: Weights = None) -> dict[str, float]:
    """Weights over :data:`DIMENSIONS` as ``{dim: w}`` (all four, in order).

    ``None``: 1 for every dimension. A mapping names dimensions (aliases like ``"id"`` work; unnamed ones
    get 0); a sequence gives four weights in ``DIMENSIONS`` order. Weights are finite and >= 0, and at least
    one is positive.
    """
    if weights is None:
        out = {d: 1.0 for d in DIMENSIONS}
    elif isinstance(weights, Mapping):
        out = {d: 0.0 for d in DIMENSIONS}
        for name, w in weights.items():
            (dim,) = parse_dims([name])
            out[dim] = float(w)
    elif isinstance(weights, (list, tuple)) or (isinstance(weights, torch.Tensor) and weights.ndim == 1):
        values = [float(w) for w in weights]
        if len(values) != len(DIMENSIONS):
            raise ValueError(f"weights as a sequence need {len(DIMENSIONS)} values in the order {DIMENSIONS}, got "
                             f"{len(values)}; or pass a dict like {{'quality': 1.0, 'identity': 2.0}}")
        out = dict(zip(DIMENSIONS, values))
    else:
        raise TypeError(f"weights must be a dict {{dimension: weight}} or {len(DIMENSIONS)} numbers, "
                        f"got {type(weights).__name__}")
    bad = {d: w for d, w in out.items() if not math.isfinite(w) or w < 0}
    if bad:
        raise ValueError(f"weights must be finite and >= 0, got {bad}; to leave a dimension out give it 0")
    if not any(w > 0 for w in out.values()):
        raise ValueError(f"at least one weight must be positive, got {out}")
    return out


def weighted_dims(weights: Mapping[str, float]) -> tuple[str, ...]:
    """The dimensions with a positive weight (the only ones worth scoring)."""
    return tuple(d for d in DIMENSIONS if weights.get(d, 0.0) > 0)


def weighted_reward(scores: torch.Tensor, weights: Mapping[str, float], nan_reward: float = 0.0) -> torch.Tensor:
    """``[B, 4]`` scores (NaN = not scored) -> ``[B]`` weighted means over the scored weighted dimensions
    (:func:`feval_core.scoring.result.weighted_mean`); rows without any get ``nan_reward``."""
    return weighted_mean(scores, weights, empty=nan_reward)


def feval_reward(
    images: Any,
    prompts: str | Sequence[str | None] | None = None,
    refs: Any = None,
    weights: Weights = None,
    scorer: FEvalScorer | str | Path | None = None,
    return_dict: bool = False,
    *,
    nan_reward: float = 0.0,
    batch_size: int = 8,
    fiqa: Any = None,
) -> torch.Tensor | dict[str, Any]:
    """Weighted F-Eval reward per image, ``float32 [B]`` on 0..100 (higher is better).

    ``images``: what generators emit — ``[B,C,H,W]`` or ``[B,H,W,C]`` tensors in [0, 1] (diffusers
    ``output_type="pt"``, DDPO, ComfyUI), numpy ``[B,H,W,C]``, a list of PIL images or paths.
    ``prompts``: one per image (or one for all); needed for correspondence. ``refs``: reference faces, one
    per image or one for all; needed for identity. ``weights``: see :func:`resolve_weights`; only dimensions
    with a positive weight are scored. ``scorer``: see :func:`get_scorer`. A ``"utility"`` weight adds ViT-FIQA's
    utility of the main face (0-100; NaN and left out when no face) from ``fiqa`` (:func:`get_fiqa_scorer`); with
    only a utility weight no F-Eval model is loaded.

    The rewards are on the images' device when ``images`` is a tensor, else on the CPU. With
    ``return_dict``: ``{"reward": [B], "quality": [B], ..., "correspondence": [B] (NaN where not scored),
    "result": ScoreResult}``.
    """
    weights, w_utility = split_utility(weights)
    if w_utility > 0 and isinstance(weights, Mapping) and not any(float(v) > 0 for v in weights.values()):
        w, res = {d: 0.0 for d in DIMENSIONS}, None  # utility only: no F-Eval model needed
    else:
        w = resolve_weights(weights)
        res = get_scorer(scorer).score(images, prompts=prompts, refs=refs, dims=weighted_dims(w),
                                       batch_size=batch_size)
    utility = None
    if w_utility > 0:
        utility = get_fiqa_scorer(fiqa).score(images, batch_size=batch_size).utility
    n = len(res) if res is not None else len(utility)
    scores = res.scores if res is not None else torch.full((n, len(DIMENSIONS)), float("nan"))
    reward = weighted_mean(scores, w, nan_reward, utility=utility, utility_weight=w_utility)
    if res is not None:
        _warn_unscored(res, reward, w, nan_reward, utility if w_utility > 0 else None)
    device = images.device if isinstance(images, torch.Tensor) else torch.device("cpu")
    reward = reward.to(device)
    if not return_dict:
        return reward
    out: dict[str, Any] = {"reward": reward}
    for j, d in enumerate(DIMENSIONS):
        out[d] = scores[:, j].to(device)
    if utility is not None:
        out[UTILITY] = utility.to(device)
    out["result"] = res
    return out


def _warn_unscored(res: ScoreResult, reward: torch.Tensor, weights: Mapping[str, float], nan_reward: float,
                   utility: torch.Tensor | None = None) -> None:
    w = torch.tensor([weights[d] > 0 for d in DIMENSIONS])
    unscored = torch.isnan(res.scores[:, w]).all(1)
    if utility is not None:
        unscored &= torch.isnan(utility)
    if not bool(unscored.any()):
        return
    first = int(unscored.nonzero()[0, 0])
    reason = res.errors[first] or "; ".join(res.warnings[first] if res.warnings else []) or "dimension not applicable"
    logger.warning("%d of %d images have no score on any weighted dimension (%s); their reward is nan_reward=%s "
                   "(first: %s: %s)", int(unscored.sum()), len(reward), ", ".join(weighted_dims(weights)),
                   nan_reward, res.names[first], reason)
