"""Choosing images by score: weighted totals, thresholds, top-k and best-of-N (plain torch, no ComfyUI)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from feval_core import DIMENSIONS
from feval_core.scoring.result import weighted_mean

from .scores import fmt

MISSING_POLICIES = ("reject", "ignore")


@dataclass
class Selection:
    """Which rows were kept (in output order) and why the others were not."""

    kept: list[int]
    reasons: dict[int, str] = field(default_factory=dict)
    totals: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)


def weighted_total(values: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """Weighted mean over the dimensions each image has a score for: ``[B, 4] -> [B]`` on 0-100 (NaN when an image
    has no weighted dimension scored); :func:`feval_core.scoring.result.weighted_mean`."""
    return weighted_mean(values.float(), list(weights))


def rank(indices: Sequence[int], totals: torch.Tensor) -> list[int]:
    """``indices`` best first by total; ties go to the earlier image; NaN totals are left out."""
    scored = [i for i in indices if not math.isnan(float(totals[i]))]
    return sorted(scored, key=lambda i: (-float(totals[i]), i))


def filter_scores(values: torch.Tensor, thresholds: Sequence[float | None], *, min_total: float | None = None,
                  weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), top_k: int = 0,
                  missing: str = "reject", utility: torch.Tensor | None = None,
                  min_utility: float | None = None) -> Selection:
    """Keep the images that meet every threshold (``None`` = no threshold), then the ``top_k`` best.

    ``missing="reject"`` drops an image whose score is n/a on a dimension that has a threshold;
    ``"ignore"`` skips that threshold for it. Kept rows come in input order, or best first with ``top_k``.
    """
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
    if len(thresholds) != len(DIMENSIONS):
        raise ValueError(f"give one threshold per dimension ({', '.join(DIMENSIONS)}), got {len(thresholds)}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 keeps every image that passes), got {top_k}")
    n = values.shape[0]
    totals = weighted_total(values, weights)
    reasons: dict[int, str] = {}
    passing: list[int] = []
    for i in range(n):
        why = []
        for j, (dim, limit) in enumerate(zip(DIMENSIONS, thresholds)):
            if limit is None:
                continue
            v = float(values[i, j])
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
            reasons[i] = ", ".join(why)
        else:
            passing.append(i)
    if top_k:
        ranked = rank(passing, totals)
        for i in passing:
            if i not in ranked:
                reasons[i] = "total n/a, cannot rank"
        for i in ranked[top_k:]:
            reasons[i] = f"not in the top {top_k} (total {fmt(float(totals[i]))})"
        passing = ranked[:top_k]
    return Selection(passing, reasons, totals)


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


def best_of_groups(values: torch.Tensor, weights: Sequence[float], *, group_size: int = 0, keep: int = 1,
                   utility: torch.Tensor | None = None, min_utility: float | None = None) -> Selection:
    """The ``keep`` best images of each group of ``group_size`` consecutive images (0 = one group).

    Groups are ``[0, N), [N, 2N), ...``; a shorter last group is used as is, with a note. Within a group
    the best total wins and ties go to the earlier image; images with no score are never picked.
    """
    if group_size < 0 or keep < 1:
        raise ValueError(f"group_size must be >= 0 (0 = whole batch) and keep >= 1, got {group_size} and {keep}")
    n = values.shape[0]
    size = group_size or n
    totals = weighted_total(values, weights)
    low: dict[int, list[str]] = {}
    if min_utility is not None:  # an image below the utility threshold is never picked
        totals = totals.clone()
        low = {i: why for i in range(n) if (why := utility_check(utility, i, min_utility))}
        totals[list(low)] = math.nan
    kept: list[int] = []
    reasons: dict[int, str] = {}
    notes: list[str] = []
    if n % size:
        notes.append(f"{n} images do not split into groups of {size}: the last group has {n % size}")
    for g, start in enumerate(range(0, n, size)):
        members = list(range(start, min(start + size, n)))
        ranked = rank(members, totals)
        if not ranked:
            notes.append(f"group {g} (#{members[0]}-#{members[-1]}): no image has a score; none picked")
        kept.extend(ranked[:keep])
        for i in members:
            if i not in ranked:
                reasons[i] = ", ".join(low[i]) if i in low else "total n/a"
            elif i not in ranked[:keep]:
                reasons[i] = f"total {fmt(float(totals[i]))}, not among the best {keep} of group {g}"
    return Selection(kept, reasons, totals, notes)
