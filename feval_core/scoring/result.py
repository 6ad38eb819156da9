"""What scoring returns: :class:`ScoreResult` (scores ``[B, 4]`` on 0..100, NaN = not applicable, and why), and
the one rule that turns scores into a total (rewards, filters and picks all use it, :func:`judged_mean`):

* a dimension the **caller** could not ask for (no prompt, no reference, an unreadable reference, weight 0) is left
  out of the image's weighted mean, never counted as 0;
* a dimension the **image failed** (:data:`~feval_core.dimensions.FAILED`: a usable reference was given and the
  image has no face; or the landmark pre-filter skipped the face) scores :data:`SCORE_FLOOR` (0), so losing the face
  never pays;
* an image with **no face at all** gets :data:`SCORE_FLOOR` as its total unless the caller says faces are optional
  (``faces_required=False``); without a face model (face count unknown) nothing is assumed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..dimensions import DIM_INDEX, DIMENSIONS, FAILED, IMAGE_ERROR, NOT_ASKED

SCORE_FLOOR = 0.0
"""The bottom of the 0..100 scale: the score of a failed dimension and the total of a faceless image."""


@dataclass
class ScoreResult:
    """Scores of a batch of images: ``scores[i, j]`` is image ``i`` on ``DIMENSIONS[j]`` (0..100, NaN = n/a)."""

    scores: torch.Tensor
    names: list[str]
    faces: list[int | None]
    errors: list[str | None]
    warnings: list[list[str]] = field(default_factory=list)
    dims: tuple[str, ...] = DIMENSIONS
    answers: list[list[dict[str, Any]]] = field(default_factory=list)
    """Per image, one ``{"question", "dimension", "probability", "score"}`` per question asked in the user's own
    words: the dimension whose expert the router picked, its probability, the score (None: not applicable)."""
    missing: list[dict[str, str]] = field(default_factory=list)
    """Per image, ``{dimension: reason}`` for every dimension without a score (:data:`~feval_core.dimensions.
    MISSING_REASONS`: not asked, no prompt, no reference, reference unusable, no face in the image, ...)."""
    prefilter: list[float | None] = field(default_factory=list)
    """Per image, the pre-filter's score (None: no face, or unreadable) when scored with a pre-filter; else empty."""
    face_info: list[Any] = field(default_factory=list)
    """Per image, the ``FaceInfo`` the scorer found (None: no face model, or unreadable) when asked to keep them
    (``keep_faces=True``), for ``FIQAScorer.score(..., faces=...)`` and pre-filters to reuse; else empty."""

    def __len__(self) -> int:
        return len(self.names)

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per image (``null`` where a dimension was not scored)."""
        rows = []
        for i, name in enumerate(self.names):
            rec: dict[str, Any] = {"image": name}
            for j, d in enumerate(DIMENSIONS):
                v = float(self.scores[i, j])
                rec[d] = None if math.isnan(v) else round(v, 4)
            rec["faces"] = self.faces[i]
            rec["error"] = self.errors[i]
            if self.prefilter:
                rec["prefilter"] = self.prefilter[i]
            if self.warnings and self.warnings[i]:
                rec["warnings"] = self.warnings[i]
            if self.answers and self.answers[i]:
                rec["answers"] = [{**a, "score": None if a["score"] is None or math.isnan(a["score"])
                                   else round(a["score"], 4), "probability": round(a["probability"], 4)}
                                  for a in self.answers[i]]
            rows.append(rec)
        return rows

    @staticmethod
    def concat(parts: Sequence[ScoreResult]) -> ScoreResult:
        if not parts:
            return ScoreResult(torch.empty(0, len(DIMENSIONS)), [], [], [], [])
        return ScoreResult(
            torch.cat([p.scores for p in parts]), [n for p in parts for n in p.names],
            [f for p in parts for f in p.faces], [e for p in parts for e in p.errors],
            [w for p in parts for w in p.warnings], parts[0].dims, [a for p in parts for a in p.answers],
            [m for p in parts for m in p.missing], [v for p in parts for v in p.prefilter],
            [f for p in parts for f in p.face_info])

    def judged(self, weights: Mapping[str, float] | Sequence[float], *, faces_required: bool = True,
               empty: float = math.nan, utility: torch.Tensor | None = None,
               utility_weight: float = 0.0) -> torch.Tensor:
        """``[B]`` totals under the one rule of this module (:func:`judged_mean`)."""
        return judged_mean(self.scores, weights, self.missing, self.faces, faces_required=faces_required,
                           empty=empty, utility=utility, utility_weight=utility_weight)


def complete_missing(scores: torch.Tensor, missing: list[dict[str, str]], errors: Sequence[str | None]
                     ) -> list[dict[str, str]]:
    """``missing`` with every NaN score explained: an image that could not be read misses every dimension
    (:data:`~feval_core.dimensions.IMAGE_ERROR`); a NaN without a recorded reason was not asked for."""
    out = []
    for i, why in enumerate(missing):
        why = dict(why)
        for j, d in enumerate(DIMENSIONS):
            if errors[i]:
                why[d] = IMAGE_ERROR
            elif math.isnan(float(scores[i, j])):
                why.setdefault(d, NOT_ASKED)
            else:
                why.pop(d, None)
        out.append({d: why[d] for d in DIMENSIONS if d in why})
    return out


def judged_scores(scores: torch.Tensor, missing: Sequence[Mapping[str, str]] = ()) -> torch.Tensor:
    """``[B, 4]`` scores with every dimension the image failed (a reason in :data:`~feval_core.dimensions.FAILED`)
    set to :data:`SCORE_FLOOR`; other NaNs stay NaN. Differentiable in ``scores``."""
    if not missing:
        return scores
    if len(missing) != scores.shape[0]:
        raise ValueError(f"{scores.shape[0]} score rows but {len(missing)} missing-reason entries")
    failed = [(i, DIM_INDEX[d]) for i, why in enumerate(missing) for d, r in why.items() if r in FAILED]
    if not failed:
        return scores
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    mask[tuple(torch.tensor(failed, device=scores.device).T)] = True
    return torch.where(mask, torch.full_like(scores, SCORE_FLOOR), scores)


def faceless(faces: Sequence[int | None]) -> torch.Tensor:
    """``[B]`` bool: the face detector ran and found no face (None = unknown: no detector, or no image)."""
    return torch.tensor([f is not None and int(f) == 0 for f in faces], dtype=torch.bool)


def judged_mean(scores: torch.Tensor, weights: Mapping[str, float] | Sequence[float],
                missing: Sequence[Mapping[str, str]] = (), faces: Sequence[int | None] = (), *,
                faces_required: bool = True, empty: float = math.nan, utility: torch.Tensor | None = None,
                utility_weight: float = 0.0) -> torch.Tensor:
    """The total of each image under the module's rule: the weighted mean of :func:`judged_scores` (failed
    dimensions count as 0, dimensions not asked for are left out; ``utility`` joins as one more column, see
    :func:`weighted_mean`), and :data:`SCORE_FLOOR` for an image with no face at all when ``faces_required``.
    Rows with nothing scored (an unreadable image) get ``empty``."""
    mean = weighted_mean(judged_scores(scores, missing), weights, empty, utility=utility,
                         utility_weight=utility_weight)
    if faces_required and len(faces):
        if len(faces) != scores.shape[0]:
            raise ValueError(f"{scores.shape[0]} score rows but {len(faces)} face counts")
        mask = faceless(faces).to(mean.device)
        mean = torch.where(mask, torch.full_like(mean, SCORE_FLOOR), mean)
    return mean


def weight_vector(weights: Mapping[str, float] | Sequence[float]) -> list[float]:
    """Four weights in :data:`DIMENSIONS` order from ``{dimension: weight}`` (missing ones are 0) or a sequence of
    four; each finite and >= 0. Dimension names must be canonical (see :func:`~feval_core.dimensions.parse_dims`)."""
    if isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(DIMENSIONS))
        if unknown:
            raise ValueError(f"unknown dimensions {unknown} in weights; choose from {', '.join(DIMENSIONS)}")
        values = [float(weights.get(d, 0.0)) for d in DIMENSIONS]
    else:
        values = [float(w) for w in weights]
    if len(values) != len(DIMENSIONS) or not all(math.isfinite(w) and w >= 0 for w in values):
        raise ValueError(f"weights must be {len(DIMENSIONS)} finite numbers >= 0 ({', '.join(DIMENSIONS)}), "
                         f"got {list(weights.items()) if isinstance(weights, Mapping) else list(weights)}")
    return values


def weighted_mean(scores: torch.Tensor, weights: Mapping[str, float] | Sequence[float],
                  empty: float = math.nan, *, utility: torch.Tensor | None = None,
                  utility_weight: float = 0.0) -> torch.Tensor:
    """``[B, 4]`` scores (NaN = not scored) -> ``[B]`` weighted mean over the dimensions with a positive weight
    that were scored for that image: a NaN dimension is left out of the image's mean, never counted as 0.

    ``utility`` (``[B]``, ViT-FIQA's 0-100 utility, NaN where no face) joins the mean as one more column with
    ``utility_weight``, under the same rule. Rows without any scored weighted column get ``empty``.
    Differentiable in ``scores`` (NaN entries get zero gradient).
    """
    if scores.ndim != 2 or scores.shape[1] != len(DIMENSIONS):
        raise ValueError(f"scores must be [B, {len(DIMENSIONS)}] in {DIMENSIONS} order, got {list(scores.shape)}")
    w = torch.tensor(weight_vector(weights), dtype=scores.dtype, device=scores.device)
    if utility is not None and utility_weight > 0:
        if utility.shape != (scores.shape[0],):
            raise ValueError(f"utility must be [B] = [{scores.shape[0]}], got {list(utility.shape)}")
        scores = torch.cat([scores, utility.to(scores.device, scores.dtype)[:, None]], 1)
        w = torch.cat([w, w.new_tensor([float(utility_weight)])])
    used = ~torch.isnan(scores) & (w > 0)
    safe = torch.where(used, scores, torch.zeros_like(scores))
    den = (used * w).sum(1)
    mean = (safe * w).sum(1) / den.clamp(min=torch.finfo(scores.dtype).tiny)
    return torch.where(den > 0, mean, torch.full_like(mean, float(empty)))
