"""Correlation metrics of IQA work: SRCC, KRCC, PLCC (raw and after a 4-parameter logistic fit).

Pairs with a NaN (or infinity) on either side are dropped. Fewer than 3 valid pairs, or a constant input,
give NaN with a logged warning rather than an exception, so one empty slice does not stop a whole table.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import OptimizeWarning, curve_fit
from scipy.special import expit

from ..errors import InputMismatchError

logger = logging.getLogger(__name__)

MIN_PAIRS = 3


def srcc(pred: ArrayLike, mos: ArrayLike) -> float:
    """Spearman rank correlation; ties get average ranks."""
    x, y = _valid_pairs(pred, mos, "SRCC")
    if x is None:
        return float("nan")
    return _pearson(_average_ranks(x), _average_ranks(y))


def krcc(pred: ArrayLike, mos: ArrayLike) -> float:
    """Kendall's tau-b (as ``scipy.stats.kendalltau`` by default), O(n log n)."""
    x, y = _valid_pairs(pred, mos, "KRCC")
    if x is None:
        return float("nan")
    return _kendall_tau_b(x, y)


def plcc(pred: ArrayLike, mos: ArrayLike) -> float:
    """Pearson linear correlation of the raw predictions."""
    x, y = _valid_pairs(pred, mos, "PLCC")
    if x is None:
        return float("nan")
    return _pearson(x, y)


def logistic4(x: ArrayLike, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """The IQA 4-parameter logistic ``(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2``."""
    x = np.asarray(x, dtype=np.float64)
    scale = max(abs(float(b4)), np.finfo(np.float64).tiny)
    return (b1 - b2) * expit((x - b3) / scale) + b2


def fit_logistic4(pred: ArrayLike, mos: ArrayLike) -> np.ndarray:
    """Fit :func:`logistic4` from predictions to MOS; returns ``[b1, b2, b3, b4]``.

    Starts from b1 = max(mos), b2 = min(mos) (swapped for a falling relation), b3 = mean(pred),
    b4 = std(pred) (1 if zero). When the fit fails, returns NaNs (logged): :func:`plcc_fitted` then falls
    back to the raw predictions.
    """
    x, y = _valid_pairs(pred, mos, "logistic fit")
    if x is None:
        return np.full(4, np.nan)
    return _fit(x, y)


def plcc_fitted(pred: ArrayLike, mos: ArrayLike) -> float:
    """PLCC after mapping the predictions through the fitted :func:`logistic4` (raw PLCC if the fit fails)."""
    x, y = _valid_pairs(pred, mos, "fitted PLCC")
    if x is None:
        return float("nan")
    return _pearson(_mapped(x, y), y)


def correlation_table(pred: ArrayLike, mos: ArrayLike) -> dict[str, float]:
    """``{"srcc", "krcc", "plcc", "plcc_fit", "n"}``; ``n`` is the number of valid pairs used."""
    x, y = _valid_pairs(pred, mos, "correlations")
    if x is None:
        nan = float("nan")
        n = 0 if y is None else int(y.size)
        return {"srcc": nan, "krcc": nan, "plcc": nan, "plcc_fit": nan, "n": n}
    return {
        "srcc": _pearson(_average_ranks(x), _average_ranks(y)),
        "krcc": _kendall_tau_b(x, y),
        "plcc": _pearson(x, y),
        "plcc_fit": _pearson(_mapped(x, y), y),
        "n": int(x.size),
    }


# --- internals -----------------------------------------------------------------------------------------


def _valid_pairs(pred: ArrayLike, mos: ArrayLike, what: str) -> tuple[Any, Any]:
    """Finite pairs as float64 arrays, or ``(None, y_valid)`` (warned) when they cannot give a correlation."""
    x = np.asarray(pred, dtype=np.float64).ravel()
    y = np.asarray(mos, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise InputMismatchError(f"{what}: got {x.size} predictions but {y.size} MOS values; pass one per image")
    keep = np.isfinite(x) & np.isfinite(y)
    if not keep.all():
        logger.info("%s: dropped %d of %d pairs with NaN/inf", what, int((~keep).sum()), x.size)
        x, y = x[keep], y[keep]
    if x.size < MIN_PAIRS:
        logger.warning("%s: only %d valid pairs (need %d); returning NaN", what, x.size, MIN_PAIRS)
        return None, y
    if np.all(x == x[0]) or np.all(y == y[0]):
        side = "predictions" if np.all(x == x[0]) else "MOS values"
        logger.warning("%s: the %s are constant over %d pairs; correlation undefined, returning NaN",
                       what, side, x.size)
        return None, y
    return x, y


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    xc, yc = _centred_unit(x), _centred_unit(y)
    if xc is None or yc is None:
        logger.warning("PLCC: zero variance after centring; returning NaN")
        return float("nan")
    denom = np.sqrt(np.dot(xc, xc)) * np.sqrt(np.dot(yc, yc))
    return float(np.clip(np.dot(xc, yc) / denom, -1.0, 1.0))


def _centred_unit(a: np.ndarray) -> np.ndarray | None:
    """``a`` centred and scaled to max |a| = 1 (scaling before and after keeps tiny or huge values finite)."""
    peak = np.abs(a).max()
    if peak == 0:
        return None
    a = a / peak
    a = a - a.mean()
    peak = np.abs(a).max()
    return None if peak == 0 else a / peak


def _average_ranks(a: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their ranks."""
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    new_value = np.r_[True, sorted_a[1:] != sorted_a[:-1]]
    dense = np.cumsum(new_value)  # 1-based tie-group id per sorted position
    bounds = np.r_[np.flatnonzero(new_value), a.size]  # start of each group, then n
    avg = 0.5 * (bounds[dense - 1] + 1 + bounds[dense])  # mean of ranks start+1 .. end
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = avg
    return ranks


def _dense_ranks(a: np.ndarray) -> np.ndarray:
    return np.unique(a, return_inverse=True)[1].astype(np.int64)


def _tied_pairs(ranks: np.ndarray) -> int:
    counts = np.bincount(ranks).astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def _kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    n = x.size
    xr, yr = _dense_ranks(x), _dense_ranks(y)
    order = np.lexsort((yr, xr))  # by x, then y: pairs tied in x never count as discordant below
    xs, ys = xr[order], yr[order]
    discordant = _count_inversions(ys)
    joint = np.r_[True, (xs[1:] != xs[:-1]) | (ys[1:] != ys[:-1]), True]
    runs = np.diff(np.flatnonzero(joint)).astype(np.int64)
    both_tied = int((runs * (runs - 1) // 2).sum())
    x_tied, y_tied = _tied_pairs(xr), _tied_pairs(yr)
    total = n * (n - 1) // 2
    con_minus_dis = total - x_tied - y_tied + both_tied - 2 * discordant
    denom = np.sqrt(float(total - x_tied)) * np.sqrt(float(total - y_tied))
    return float(np.clip(con_minus_dis / denom, -1.0, 1.0))


def _count_inversions(a: np.ndarray) -> int:
    """Pairs i < j with a[i] > a[j] (strictly), by a vectorised bottom-up merge sort: O(n log^2 n)."""
    n = a.size
    cur = a.astype(np.int64)
    base = int(cur.max()) + 1 if n else 1
    idx = np.arange(n, dtype=np.int64)
    total = 0
    width = 1
    while width < n:
        pair = idx // (2 * width)
        is_left = (idx // width) % 2 == 0
        keys = pair * base + cur  # each block is sorted, so keys of left blocks are globally sorted
        left_keys = keys[is_left]
        right_pair = pair[~is_left]
        at_most = np.searchsorted(left_keys, keys[~is_left], side="right")
        left_end = np.searchsorted(left_keys, (right_pair + 1) * base, side="left")
        total += int((left_end - at_most).sum())
        cur = np.sort(keys) - pair * base  # a pair's keys stay in its index range, now merged
        width *= 2
    return total


def _fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if x.size <= 4:  # four parameters: fewer points than that cannot fit, four would fit exactly
        logger.warning("logistic fit needs more than 4 pairs, got %d; using the raw predictions for fitted PLCC",
                       x.size)
        return np.full(4, np.nan)
    rising = _pearson(_average_ranks(x), _average_ranks(y)) >= 0
    hi, lo = float(y.max()), float(y.min())
    std = float(x.std())
    p0 = [hi, lo, float(x.mean()), std if std > 0 else 1.0]
    if not rising:
        p0[0], p0[1] = lo, hi
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)  # "covariance could not be estimated": fit is fine
            warnings.simplefilter("ignore", RuntimeWarning)
            params, _ = curve_fit(logistic4, x, y, p0=p0, maxfev=20000)
    except (RuntimeError, ValueError) as exc:
        logger.warning("logistic fit failed (%s); using the raw predictions for fitted PLCC", exc)
        return np.full(4, np.nan)
    if not np.all(np.isfinite(params)):
        logger.warning("logistic fit gave non-finite parameters; using the raw predictions for fitted PLCC")
        return np.full(4, np.nan)
    return np.asarray(params, dtype=np.float64)


def _mapped(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    params = _fit(x, y)
    if np.isnan(params).any():
        return x
    mapped = logistic4(x, *params)
    if np.all(mapped == mapped[0]):
        logger.warning("logistic fit collapsed to a constant; using the raw predictions for fitted PLCC")
        return x
    return mapped
