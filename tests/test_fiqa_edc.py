"""EDC, pAUC and the FMR threshold agree with brute-force computations written straight from the definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from feval_core.fiqa.edc import edc, pair_quality, threshold_at_fmr


def brute_fnmr_after(mated: np.ndarray, quality: np.ndarray, threshold: float, fraction: float) -> float:
    """Discard whole quality levels from the lowest up while the discarded share stays <= fraction; FNMR of the rest."""
    levels = sorted(set(quality.tolist()))
    cut = -math.inf
    for level in levels:
        share = sum(1 for q in quality if q < level) / len(quality)
        if share <= fraction + 1e-12:
            cut = level
    kept = [s for s, q in zip(mated, quality) if q >= cut]
    return sum(1 for s in kept if s < threshold) / len(kept)


def brute_pauc(mated: np.ndarray, quality: np.ndarray, threshold: float, upto: float, steps: int = 5000) -> float:
    """Midpoint Riemann sum of the brute-force EDC."""
    xs = (np.arange(steps) + 0.5) / steps * upto
    return float(sum(brute_fnmr_after(mated, quality, threshold, x) for x in xs) * upto / steps)


CASES = {
    # mated scores, pair qualities, threshold
    "distinct": ([0.1, 0.9, 0.2, 0.8, 0.7, 0.3, 0.95, 0.6, 0.4, 0.85], [1, 9, 2, 8, 7, 3, 10, 6, 4, 5], 0.5),
    "ties": ([0.1, 0.9, 0.2, 0.8, 0.7, 0.3, 0.95, 0.6, 0.4, 0.85], [1, 1, 1, 5, 5, 2, 9, 9, 2, 5], 0.5),
    "all_tied": ([0.1, 0.9, 0.2, 0.8], [3, 3, 3, 3], 0.5),
    "no_errors": ([0.9, 0.8, 0.7], [1, 2, 3], 0.5),
    "worst_first_is_best": ([0.9, 0.1, 0.8, 0.2, 0.7], [5, 0, 4, 1, 3], 0.5),
}


@pytest.mark.parametrize("name", CASES)
def test_edc_and_pauc_match_brute_force(name: str) -> None:
    mated, quality, tau = (np.asarray(v, float) if i < 2 else v for i, v in enumerate(CASES[name]))
    curve = edc(mated, quality, tau)
    for x in (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 0.7):
        assert curve.error_at(x) == pytest.approx(brute_fnmr_after(mated, quality, tau, x)), x
    for upto in (0.2, 0.3, 1.0):
        assert curve.pauc(upto) == pytest.approx(brute_pauc(mated, quality, tau, upto), abs=5e-4), upto


def test_tied_qualities_are_discarded_together() -> None:
    # three comparisons share the lowest quality: discarding "one" of them is not possible
    mated = np.array([0.1, 0.9, 0.9, 0.2, 0.9])
    quality = np.array([1.0, 1.0, 1.0, 2.0, 3.0])
    curve = edc(mated, quality, 0.5)
    assert curve.discard.tolist() == [0.0, 0.6, 0.8]
    assert curve.error.tolist() == pytest.approx([0.4, 0.5, 0.0])
    assert curve.pauc(0.3) == pytest.approx(0.4 * 0.3)  # nothing can be discarded before 60%
    assert curve.pauc(0.7) == pytest.approx(0.4 * 0.6 + 0.5 * 0.1)


def test_random_discard_is_flat_and_a_perfect_quality_removes_errors_first() -> None:
    rng = np.random.default_rng(0)
    mated = rng.uniform(size=4000)
    tau = 0.2  # FNMR 20%
    flat = edc(mated, rng.uniform(size=4000), tau)
    assert flat.pauc(0.3) == pytest.approx(flat.random_pauc(0.3), rel=0.1)
    oracle = edc(mated, mated, tau)  # quality = the score: low scores (the errors) go first
    f0 = oracle.start  # FNMR falls as (f0 - x) / (1 - x) until every error is gone at x = f0
    assert oracle.pauc(0.3) == pytest.approx(f0 + (1 - f0) * math.log(1 - f0), rel=0.01)
    assert oracle.error_at(f0 + 1e-3) == 0.0


def test_pair_quality_is_the_lower_one_and_nan_is_the_lowest() -> None:
    q = pair_quality(np.array([0.3, np.nan, 0.9]), np.array([0.5, 0.8, 0.1]))
    assert q[0] == 0.3 and q[1] == -np.inf and q[2] == 0.1


@pytest.mark.parametrize("fmr", [0.001, 0.01, 0.1, 0.25, 0.5])
def test_threshold_at_fmr_matches_brute_force(fmr: float) -> None:
    rng = np.random.default_rng(1)
    nonmated = np.round(rng.normal(size=2000), 2)  # rounded: many ties
    tau = threshold_at_fmr(nonmated, fmr)
    assert np.mean(nonmated >= tau) <= fmr + 1e-12
    # the lowest such threshold among the candidate values: any observed score below it breaks the target
    lower = nonmated[nonmated < tau]
    if lower.size:
        assert np.mean(nonmated >= lower.max()) > fmr


def test_threshold_with_too_few_nonmated_sits_above_all_of_them() -> None:
    tau = threshold_at_fmr(np.array([0.1, 0.5, 0.3]), 1e-3)
    assert tau > 0.5 and np.nextafter(0.5, 1) == tau
    with pytest.raises(ValueError, match="non-mated"):
        threshold_at_fmr(np.array([]), 1e-3)
