"""Choosing images by score: weighted totals, thresholds, top-k and best-of-N (plain torch, no ComfyUI).

Totals follow the engine's one rule (:func:`feval_core.scoring.result.judged_mean`, as rewards do): a dimension
that was not asked for is left out, one the image failed (no face next to a reference) counts 0. An image in which
the face detector found no face is never kept or picked unless ``allow_faceless`` (a face filter keeps faces).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from feval_core import DIMENSIONS
from feval_core.scoring.result import faceless, judged_mean, judged_scores

from .scores import fmt

MISSING_POLICIES = ("reject", "ignore")
NO_FACE_REASON = "no face in the image (allow_no_face keeps it)"


@dataclass
class Selection:
    """Which rows were kept (in output order) and why the others were not."""

    kept: list[int]
    reasons: dict[int, str] = field(default_factory=dict)
    totals: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)


def weighted_total(values: torch.Tensor, weights: Sequence[float], missing: Sequence[dict[str, str]] = ()
                   ) -> torch.Tensor:
    """``[B, 4] -> [B]`` totals on 0-100 under the engine's rule (:func:`feval_core.scoring.result.judged_mean`,
    without the faceless floor: faceless images are left out by :func:`faceless_out`); NaN when nothing is scored."""
    return judged_mean(values.float(), list(weights), missing, faces_required=False)


def faceless_out(faces: Sequence[int | None], allow_faceless: bool) -> set[int]:
    """The images to leave out because the detector found no face in them (none when ``allow_faceless``)."""
    if allow_faceless or not faces:
        return set()
    return {i for i, f in enumerate(faceless(faces).tolist()) if f}


def rank(indices: Sequence[int], totals: torch.Tensor) -> list[int]:
    """``indices`` best first by total; ties go to the earlier image; NaN totals are left out."""
    scored = [i for i in indices if not math.isnan(float(totals[i]))]
    return sorted(scored, key=lambda i: (-float(totals[i]), i))


def filter_scores(values: torch.Tensor, thresholds: Sequence[float | None], *, min_total: float | None = None,
                  weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), top_k: int = 0,
                  missing: str = "reject", reasons: Sequence[dict[str, str]] = (),
                  faces: Sequence[int | None] = (), allow_faceless: bool = False,
                  utility: torch.Tensor | None = None, min_utility: float | None = None) -> Selection:
    """Keep the images that meet every threshold (``None`` = no threshold), then the ``top_k`` best.

    ``missing="reject"`` drops an image whose score is n/a on a dimension that has a threshold;
    ``"ignore"`` skips that threshold for it. Kept rows come in input order, or best first with ``top_k``.
    ``reasons`` (per image ``{dimension: reason code}``) and ``faces`` (per image face count) feed the engine's
    rule: a failed dimension counts 0 in the total, a faceless image is dropped unless ``allow_faceless``.
    """
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
    if len(thresholds) != len(DIMENSIONS):
        raise ValueError(f"give one threshold per dimension ({', '.join(DIMENSIONS)}), got {len(thresholds)}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 keeps every image that passes), got {top_k}")
    n = values.shape[0]
    totals = weighted_total(values, weights, reasons)
    judged = judged_values(values, reasons)
    no_face = faceless_out(faces, allow_faceless)
    dropped: dict[int, str] = {}
    passing: list[int] = []
    for i in range(n):
        why = [NO_FACE_REASON] if i in no_face else []
        for j, (dim, limit) in enumerate(zip(DIMENSIONS, thresholds)):
            if limit is None:
                continue
            v = float(judged[i, j])
            if math.isnan(v):
                if missing == "reject":
                    why.append(f"{dim} n/a")
            elif v < limit:
                why.append(f"{dim} {fmt(v)} < {fmt(limit)}")
        if min_total is not None:
            t = float(totals[i])
            if math.isnan(t):
                if missing == "reject":
                    why.append("total n/a")
            elif t < min_total:
                why.append(f"total {fmt(t)} < {fmt(min_total)}")
        why += utility_check(utility, i, min_utility, missing)
        if why:
            dropped[i] = ", ".join(why)
        else:
            passing.append(i)
    if top_k:
        ranked = rank(passing, totals)
        for i in passing:
            if i not in ranked:
                dropped[i] = "total n/a, cannot rank"
        for i in ranked[top_k:]:
            dropped[i] = f"not in the top {top_k} (total {fmt(float(totals[i]))})"
        passing = ranked[:top_k]
    return Selection(passing, dropped, totals)


def utility_check(utility: torch.Tensor | None, i: int, min_utility: float | None,
                  missing: str = "reject") -> list[str]:
    """Why image ``i`` fails the ViT-FIQA utility threshold (empty when it passes or there is none)."""
    if min_utility is None:
        return []
    if utility is None:
        raise ValueError("a utility threshold needs utility scores: pass the scores through 'Face utility "
                         "(ViT-FIQA)' first, or set min_utility to 0")
    u = float(utility[i])
    if math.isnan(u):
        return ["utility n/a"] if missing == "reject" else []
    return [f"utility {fmt(u)} < {fmt(min_utility)}"] if u < min_utility else []


def judged_values(values: torch.Tensor, reasons: Sequence[dict[str, str]] = ()) -> torch.Tensor:
    """The scores thresholds compare: a dimension the image failed counts 0 (the engine's rule)."""
    return judged_scores(values.float(), reasons)


def best_of_groups(values: torch.Tensor, weights: Sequence[float], *, group_size: int = 0, keep: int = 1,
                   reasons: Sequence[dict[str, str]] = (), faces: Sequence[int | None] = (),
                   allow_faceless: bool = False,
                   utility: torch.Tensor | None = None, min_utility: float | None = None) -> Selection:
    """The ``keep`` best images of each group of ``group_size`` consecutive images (0 = one group).

    Groups are ``[0, N), [N, 2N), ...``; a shorter last group is used as is, with a note. Within a group
    the best total (the engine's rule, see :func:`filter_scores`) wins and ties go to the earlier image; images
    with no score, and faceless ones unless ``allow_faceless``, are never picked.
    """
    if group_size < 0 or keep < 1:
        raise ValueError(f"group_size must be >= 0 (0 = whole batch) and keep >= 1, got {group_size} and {keep}")
    n = values.shape[0]
    size = group_size or n
    totals = weighted_total(values, weights, reasons)
    no_face = faceless_out(faces, allow_faceless)
    low: dict[int, list[str]] = {}
    if min_utility is not None:  # an image below the utility threshold is never picked
        totals = totals.clone()
        low = {i: why for i in range(n) if (why := utility_check(utility, i, min_utility))}
        totals[list(low)] = math.nan
    kept: list[int] = []
    dropped: dict[int, str] = {}
    notes: list[str] = []
    if n % size:
        notes.append(f"{n} images do not split into groups of {size}: the last group has {n % size}")
    for g, start in enumerate(range(0, n, size)):
        members = list(range(start, min(start + size, n)))
        ranked = rank([i for i in members if i not in no_face], totals)
        if not ranked:
            what = ("no image has a face (allow_no_face picks among them)" if all(i in no_face for i in members)
                    else "no image has a score")
            notes.append(f"group {g} (#{members[0]}-#{members[-1]}): {what}; none picked")
        kept.extend(ranked[:keep])
        for i in members:
            if i in no_face:
                dropped[i] = NO_FACE_REASON
            elif i not in ranked:
                dropped[i] = ", ".join(low[i]) if i in low else "total n/a"
            elif i not in ranked[:keep]:
                dropped[i] = f"total {fmt(float(totals[i]))}, not among the best {keep} of group {g}"
    return Selection(kept, dropped, totals, notes)
