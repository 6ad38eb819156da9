"""Reproducible train/val/test splits of manifest rows, optionally keeping groups (models, images) whole."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ManifestError
from .manifest import ManifestRow, write_manifest

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
GROUP_BY: tuple[str | None, ...] = ("model", "image", None)
_MODEL_TRIALS = 256  # random assignment orders tried for a by-model split; the seed picks among the best


def split_rows(
    rows: Sequence[ManifestRow],
    *,
    fractions: Sequence[float] = (0.8, 0.05, 0.15),
    seed: int = 0,
    by: str | None = "image",
) -> dict[str, list[ManifestRow]]:
    """Split rows into ``{"train", "val", "test"}`` in the given fractions of rows, reproducibly from ``seed``.

    ``by="model"`` keeps each generator model in exactly one split (unseen-generator protocol),
    ``by="image"`` keeps all rows of one image together, ``None`` splits rows independently. Groups are
    assigned greedily to the split furthest below its target, so group splits approach the fractions as
    closely as the group sizes allow; every split with a non-zero fraction gets at least one group. Rows keep
    their manifest order within a split.
    """
    fracs = _check_fractions(fractions)
    if by not in GROUP_BY:
        raise ValueError(f"by={by!r} is not a grouping; use 'model', 'image' or None")
    rows = list(rows)
    if not rows:
        raise ManifestError("no rows to split; read a manifest first")
    groups = _groups(rows, by)
    wanted = [i for i, f in enumerate(fracs) if f > 0]
    if len(groups) < len(wanted):
        unit = {"model": "models", "image": "images", None: "rows"}[by]
        raise ManifestError(
            f"cannot fill {len(wanted)} splits ({', '.join(SPLITS[i] for i in wanted)}) from {len(groups)} {unit}; "
            f"set the fraction of a split to 0 or split by={'image' if by == 'model' else None!r}")
    sizes = np.array([len(g) for g in groups], dtype=np.int64)
    targets = np.asarray(fracs) * len(rows)
    rng = np.random.default_rng(seed)
    if by == "model":
        assignment = _best_assignment(sizes, targets, rng)
    else:
        assignment = _greedy(rng.permutation(len(groups)), sizes, targets)
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for group, split in zip(groups, assignment, strict=True):
        out[SPLITS[split]].extend(group)
    result = {s: [rows[i] for i in sorted(idx)] for s, idx in out.items()}
    logger.info("split %d rows by %s (seed %d): %s", len(rows), by, seed,
                ", ".join(f"{s} {len(v)}" for s, v in result.items()))
    return result


def write_splits(
    rows: Sequence[ManifestRow],
    out_dir: str | os.PathLike[str],
    *,
    fractions: Sequence[float] = (0.8, 0.05, 0.15),
    seed: int = 0,
    by: str | None = "image",
) -> dict[str, Path]:
    """Split as :func:`split_rows` and write ``train.jsonl``, ``val.jsonl``, ``test.jsonl`` under ``out_dir``.

    Empty splits (fraction 0) are not written. Returns the paths written.
    """
    out_dir = Path(out_dir)
    parts = split_rows(rows, fractions=fractions, seed=seed, by=by)
    written: dict[str, Path] = {}
    for name, part in parts.items():
        path = out_dir / f"{name}.jsonl"
        if not part:
            if path.exists():
                logger.warning("split %s is empty but %s exists from an earlier run; delete it", name, path)
            continue
        write_manifest(part, path)
        written[name] = path
    return written


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fracs = tuple(float(f) for f in fractions)
    if len(fracs) != 3:
        raise ValueError(f"fractions must be 3 numbers (train, val, test), got {len(fracs)}: {fractions!r}")
    if any(not math.isfinite(f) or f < 0 for f in fracs):
        raise ValueError(f"fractions must be finite and non-negative, got {fractions!r}")
    if abs(sum(fracs) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions!r} (sum {sum(fracs):g}), e.g. (0.8, 0.05, 0.15)")
    return fracs  # type: ignore[return-value]


def _groups(rows: list[ManifestRow], by: str | None) -> list[list[int]]:
    """Row indices per group, groups in order of first appearance."""
    if by is None:
        return [[i] for i in range(len(rows))]
    if by == "model":
        missing = [r.line or i + 1 for i, r in enumerate(rows) if not r.model]
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            raise ManifestError(f"by='model' needs a \"model\" on every row; {len(missing)} rows lack it "
                                f"(lines {shown}); add it or split by='image'")
    key_of = (lambda r: r.model) if by == "model" else (lambda r: str(r.image))
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(key_of(row), []).append(i)
    return list(groups.values())


def _greedy(order: np.ndarray, sizes: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Give each group (in ``order``) to the split furthest below target, filling empty wanted splits last."""
    wanted = np.flatnonzero(targets > 0)
    filled = np.zeros(3)
    n_groups = np.zeros(3, dtype=np.int64)
    assignment = np.empty(len(sizes), dtype=np.int64)
    for left, g in zip(range(len(order), 0, -1), order, strict=True):
        empty = wanted[n_groups[wanted] == 0]
        choices = empty if left <= len(empty) else wanted
        split = choices[np.argmax(targets[choices] - filled[choices])]
        assignment[g] = split
        filled[split] += sizes[g]
        n_groups[split] += 1
    return assignment


def _best_assignment(sizes: np.ndarray, targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Greedy by size (largest first) plus random orders; the seed picks one among the near-best."""
    n = len(sizes)
    shuffled = rng.permutation(n)  # ties in size broken by the seed
    trials = min(_MODEL_TRIALS, max(8, 50_000 // n))
    orders = [shuffled[np.argsort(-sizes[shuffled], kind="stable")]] + [rng.permutation(n) for _ in range(trials)]
    candidates = [_greedy(o, sizes, targets) for o in orders]
    errors = np.array([np.abs(np.bincount(a, weights=sizes, minlength=3) - targets).sum() for a in candidates])
    tolerance = 0.01 * sizes.sum()
    near_best = np.flatnonzero(errors <= errors.min() + tolerance)
    return candidates[int(rng.choice(near_best))]
