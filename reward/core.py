"""``feval_reward``: one weighted reward per image from F-Eval's four dimensions.

The reward of image ``i`` is the total of :func:`feval_core.scoring.result.judged_mean` — one rule for every
reward shape, filter and pick:

    reward_i = sum_d w_d * s_id / sum_d w_d      (d: w_d > 0 and d scored, or failed with s_id = 0)

so it stays on F-Eval's 0..100 scale. A dimension the caller could not ask for (no reference -> identity, no
prompt -> correspondence, an unreadable reference) is left out of that image's mean; a dimension the image
**failed** (a usable reference was given and the image has no face) counts as 0; an image with **no face at
all** gets the floor (0) unless ``faces_required=False``. An image with no scored weighted dimension (e.g. it
could not be read) gets ``nan_reward`` (default 0.0); pass ``nan_reward=float("nan")`` to filter yourself.

Why a score is missing reaches the log once per distinct reason (:class:`ReasonLog`) and, in every shape's
metadata, per image (``warnings``, ``missing``).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from feval_core.dimensions import DIMENSIONS, FAILED, NO_FACE, NO_PROMPT, NO_REFERENCE, PREFILTERED, parse_dims
from feval_core.faces.identity import NO_FACE_IN_IMAGE
from feval_core.scoring.result import SCORE_FLOOR, faceless, judged_scores, weighted_mean

if TYPE_CHECKING:  # pragma: no cover
    from feval_core.scoring.result import ScoreResult
    from feval_core.scoring.scorer import FEvalScorer

logger = logging.getLogger(__name__)

MODEL_ENV = "FEVAL_REWARD_MODEL"
"""Environment variable naming the default scorer's checkpoint (folder or hub id), or a reward server's URL."""
DEVICE_ENV = "FEVAL_REWARD_DEVICE"
"""Environment variable naming the default scorer's device (``cuda``, ``cuda:1``, ``cpu``); a bare ``cuda`` means
this process's GPU."""
FIQA_ENV = "FEVAL_REWARD_FIQA"
"""Environment variable naming the default ViT-FIQA model folder (for a ``utility`` weight)."""
UTILITY = "utility"

Weights = Mapping[str, float] | Sequence[float] | None

_SCORERS: dict[tuple[str, str], FEvalScorer] = {}
_SCORERS_LOCK = threading.Lock()


def process_device() -> str:
    """The calling process's device: accelerate's when its state is set up (``accelerate launch``, an
    ``Accelerator``), else ``cuda:$LOCAL_RANK`` when CUDA is available (torchrun, deepspeed), else ``cpu``."""
    dev = accelerate_device()
    if dev is not None:
        return dev
    if not torch.cuda.is_available():
        return "cpu"
    return _local_cuda()


def accelerate_device() -> str | None:
    """accelerate's device for this process when its state is already set up (never sets it up), else None."""
    try:
        from accelerate.state import PartialState
    except ImportError:  # pragma: no cover - accelerate is a core dependency
        return None
    return str(PartialState().device) if PartialState._shared_state != {} else None


def _local_cuda() -> str:
    rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    count = torch.cuda.device_count()
    if rank >= count:
        raise RuntimeError(f"LOCAL_RANK={rank} but this machine has {count} GPUs visible; launch at most {count} "
                           f"processes per machine, or pass device= (or set {DEVICE_ENV}) to choose one")
    return f"cuda:{rank}"


def resolve_device(device: str | torch.device | None = None) -> str:
    """Where this process's reward scorer goes: ``device`` if given, else ``$FEVAL_REWARD_DEVICE``, else
    :func:`process_device`. A bare ``cuda`` (argument or variable) means this process's GPU, not GPU 0."""
    chosen = str(device) if device is not None else os.environ.get(DEVICE_ENV) or None
    if chosen is None:
        return process_device()
    if chosen == "cuda":
        return process_device() if torch.cuda.is_available() else chosen
    return chosen


def get_scorer(scorer: FEvalScorer | str | Path | None = None, *, device: str | torch.device | None = None
               ) -> FEvalScorer:
    """The scorer to use: ``scorer`` itself, a reward server's URL (``http://host:port``, a
    :class:`~reward.remote.RemoteScorer`), a checkpoint path/hub id loaded once per process and device, or,
    with ``None``, what ``$FEVAL_REWARD_MODEL`` names. Local checkpoints go to :func:`resolve_device` (each
    process of ``accelerate launch`` on its own GPU).

    Loaded scorers are cached (one per checkpoint and device) and shared: a scorer is thread-safe.
    """
    if scorer is not None and not isinstance(scorer, (str, Path)):
        if not hasattr(scorer, "score"):
            raise TypeError(f"scorer must be a FEvalScorer, a checkpoint path or a hub id, got {type(scorer).__name__}")
        return scorer
    source = scorer if scorer is not None else os.environ.get(MODEL_ENV)
    if not source:
        raise RuntimeError(
            f"no F-Eval scorer given: pass scorer=FEvalScorer.from_pretrained(...) (or a checkpoint path, or a reward "
            f"server's URL), or set {MODEL_ENV} to a checkpoint folder, hub id or http:// URL")
    if str(source).startswith(("http://", "https://")):
        from .remote import RemoteScorer

        key = (str(source), "remote")
        with _SCORERS_LOCK:
            if key not in _SCORERS:
                _SCORERS[key] = RemoteScorer(str(source))
            return _SCORERS[key]
    from feval_core.scoring.scorer import FEvalScorer

    dev = resolve_device(device)
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

    dev = resolve_device(device)
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
    (:func:`feval_core.scoring.result.weighted_mean`); rows without any get ``nan_reward``. Scores alone do not
    say why a dimension is missing: rewards use :meth:`ScoreResult.judged`, which does."""
    return weighted_mean(scores, weights, empty=nan_reward)


class ReasonLog:
    """Logs why images got no score or the floor: one line per distinct reason, the first time it is seen (later
    times at DEBUG), with how many images of the batch it concerned. Thread-safe; remembers up to ``limit``."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def log(self, reasons: Sequence[Sequence[str]], what: str = "F-Eval reward") -> None:
        counts = Counter(r for per_image in reasons for r in dict.fromkeys(per_image))
        for reason, count in counts.items():
            with self._lock:
                new = reason not in self._seen
                if new and len(self._seen) < self.limit:
                    self._seen.add(reason)
            logger.log(logging.WARNING if new else logging.DEBUG, "%s: %d of %d images: %s", what, count,
                       len(reasons), reason)


REASONS = ReasonLog()
"""The process-wide log of :func:`feval_reward` calls that bring none of their own (the shapes each have one)."""


def image_reasons(res: ScoreResult, weights: Mapping[str, float], nan_reward: float, faces_required: bool,
                  utility: torch.Tensor | None = None) -> list[list[str]]:
    """Per image, why its reward is not a plain mean of its weighted scores: its error, the scorer's other warnings,
    a failed dimension (0), weighted dimensions left out for want of an input, the floor for a faceless image."""
    dims = weighted_dims(weights)
    out = []
    for i in range(len(res)):
        missing = res.missing[i] if res.missing else {}
        if res.errors[i]:
            out.append([f"{res.errors[i]}; reward = nan_reward={nan_reward}"])
            continue
        # the scorer's no-face notes are said better below, with what they cost the reward
        why = [w for w in (res.warnings[i] if res.warnings else []) if not w.startswith(NO_FACE_IN_IMAGE)]
        why += [f"{d} = 0: {_FAILED_WHY.get(missing[d], missing[d])}" for d in dims if missing.get(d) in FAILED]
        why += [f"{d} not scored ({missing[d]}): left out of the mean" for d in dims
                if missing.get(d) in (NO_PROMPT, NO_REFERENCE)]
        if faces_required and res.faces[i] == 0:
            why.append(f"no face in the image: reward = floor {SCORE_FLOOR} (faces_required=False to score it)")
        elif all(d in missing and missing[d] not in FAILED for d in dims) and (
                utility is None or math.isnan(float(utility[i]))):
            what = ", ".join([*dims, *([UTILITY] if utility is not None else [])])
            why.append(f"no weighted dimension ({what}) could be scored: reward = nan_reward={nan_reward}")
        out.append(why)
    return out


_FAILED_WHY = {NO_FACE: "no face in the image although a reference was given",
               PREFILTERED: "the face was skipped by the pre-filter"}


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
    faces_required: bool = True,
    device: str | torch.device | None = None,
    reason_log: ReasonLog | None = None,
) -> torch.Tensor | dict[str, Any]:
    """Weighted F-Eval reward per image, ``float32 [B]`` on 0..100 (higher is better).

    ``images``: what generators emit — ``[B,C,H,W]`` or ``[B,H,W,C]`` tensors in [0, 1] (diffusers
    ``output_type="pt"``, DDPO, ComfyUI), numpy ``[B,H,W,C]``, a list of PIL images or paths.
    ``prompts``: one per image (or one for all); needed for correspondence. ``refs``: reference faces, one
    per image or one for all; needed for identity. ``weights``: see :func:`resolve_weights`; only dimensions
    with a positive weight are scored. ``scorer``: see :func:`get_scorer` (``device``: where a scorer loaded
    from a path goes; default this process's device). ``faces_required``: a faceless image gets the floor (0);
    pass False when images without faces are fine. ``reason_log``: where reasons are logged once each (default:
    one for the process, :data:`REASONS`). A ``"utility"`` weight adds ViT-FIQA's utility of the main face (0-100)
    from ``fiqa`` (:func:`get_fiqa_scorer`) as one more column of the same mean; with only a utility weight no
    F-Eval model is loaded.

    The rewards are on the images' device when ``images`` is a tensor, else on the CPU. With
    ``return_dict``: ``{"reward": [B], "quality": [B], ..., "correspondence": [B] (a failed dimension 0, NaN where
    not scored), "faces", "warnings", "missing" (per image), "result": ScoreResult}``.
    """
    weights, w_utility = split_utility(weights)
    utility_only = w_utility > 0 and isinstance(weights, Mapping) and not any(float(v) > 0 for v in weights.values())
    w = dict.fromkeys(DIMENSIONS, 0.0) if utility_only else resolve_weights(weights)
    utility = None
    if utility_only:
        fres = get_fiqa_scorer(fiqa, device=device).score(images, batch_size=batch_size)
        res = fres.as_score_result()
    else:
        sc = get_scorer(scorer, device=device)
        keep = {"keep_faces": True} if w_utility > 0 else {}
        res = sc.score(images, prompts=prompts, refs=refs, dims=weighted_dims(w), batch_size=batch_size, **keep)
        if w_utility > 0:  # ViT-FIQA reuses F-Eval's faces (detected once) when its face pack is the same
            fres = get_fiqa_scorer(fiqa, device=device).score(images, batch_size=batch_size,
                                                              faces=res.face_info or None)
    if w_utility > 0:
        utility = fres.utility
    reward = res.judged(w, faces_required=faces_required, empty=nan_reward, utility=utility, utility_weight=w_utility)
    reasons = image_reasons(res, w, nan_reward, faces_required, utility=utility if w_utility > 0 else None)
    (reason_log or REASONS).log(reasons)
    out_device = images.device if isinstance(images, torch.Tensor) else torch.device("cpu")
    reward = reward.to(out_device)
    if not return_dict:
        return reward
    judged = judged_scores(res.scores, res.missing)
    out: dict[str, Any] = {"reward": reward}
    for j, d in enumerate(DIMENSIONS):
        out[d] = judged[:, j].to(out_device)
    if utility is not None:
        out[UTILITY] = utility.to(out_device)
    out["faces"] = list(res.faces)
    out["faceless"] = faceless(res.faces).tolist()
    out["warnings"] = reasons
    out["missing"] = [dict(m) for m in res.missing] if res.missing else [{} for _ in range(len(res))]
    out["result"] = res
    return out

