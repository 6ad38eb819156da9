"""SRCC / KRCC / PLCC against scipy, NaN and degenerate inputs, and the logistic fit."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from feval_core.errors import InputMismatchError
from feval_core.evaluate.metrics import (
    correlation_table,
    fit_logistic4,
    krcc,
    logistic4,
    plcc,
    plcc_fitted,
    srcc,
)

REFERENCE = [
    (srcc, lambda x, y: stats.spearmanr(x, y)[0]),
    (krcc, lambda x, y: stats.kendalltau(x, y)[0]),
    (plcc, lambda x, y: stats.pearsonr(x, y)[0]),
]


def _data(n: int, ties: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = 0.6 * x + rng.normal(size=n)
    if ties == "some":
        x, y = np.round(x, 1), np.round(y, 1)
    elif ties == "heavy":
        x, y = np.round(x * 2), np.round(y)  # a handful of distinct values
    return x, y


@pytest.mark.parametrize("n", [3, 5, 17, 200, 5000])
@pytest.mark.parametrize("ties", ["none", "some", "heavy"])
@pytest.mark.parametrize(("ours", "theirs"), REFERENCE, ids=["srcc", "krcc", "plcc"])
def test_agrees_with_scipy(n: int, ties: str, ours, theirs) -> None:
    x, y = _data(n, ties, seed=n)
    if np.all(x == x[0]) or np.all(y == y[0]):
        pytest.skip("constant sample")
    assert ours(x, y) == pytest.approx(theirs(x, y), abs=1e-6)


# MOS-like values on a 1e-3 grid; (subnormal floats make scipy itself inexact, so they are not compared)
_MOS = st.integers(-100_000, 100_000).map(lambda v: v / 1000)


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(st.tuples(st.integers(-5, 5), _MOS), min_size=3, max_size=60))
def test_property_matches_scipy_and_is_bounded(pairs: list[tuple[int, float]]) -> None:
    x = np.array([p[0] for p in pairs], dtype=float)
    y = np.array([p[1] for p in pairs])
    if np.all(x == x[0]) or np.all(y == y[0]):
        assert math.isnan(srcc(x, y)) and math.isnan(krcc(x, y))
        return
    for ours, theirs in REFERENCE:
        value = ours(x, y)
        assert -1.0 <= value <= 1.0
        assert value == pytest.approx(theirs(x, y), abs=1e-6)
    # rank metrics only see the order; swapping the arguments changes nothing
    assert srcc(np.exp(x / 10), y) == pytest.approx(srcc(x, y), abs=1e-9)
    assert krcc(y, x) == pytest.approx(krcc(x, y), abs=1e-9)


def test_nan_pairs_are_dropped() -> None:
    x, y = _data(100, "none", seed=1)
    xn, yn = x.copy(), y.copy()
    xn[[3, 10]] = np.nan
    yn[[10, 50]] = np.nan
    keep = ~(np.isnan(xn) | np.isnan(yn))
    table = correlation_table(xn, yn)
    assert table["n"] == 97
    assert table["srcc"] == pytest.approx(stats.spearmanr(x[keep], y[keep])[0], abs=1e-9)
    assert table["krcc"] == pytest.approx(stats.kendalltau(x[keep], y[keep])[0], abs=1e-9)
    assert table["plcc"] == pytest.approx(stats.pearsonr(x[keep], y[keep])[0], abs=1e-9)


@pytest.mark.parametrize(
    ("pred", "mos"),
    [([1.0, 2.0], [3.0, 4.0]), ([1.0, np.nan, 2.0, 3.0], [1.0, 2.0, np.nan, 4.0]), ([2.0] * 5, [1, 2, 3, 4, 5]),
     ([1, 2, 3, 4, 5], [7.0] * 5), ([], [])],
)
def test_degenerate_inputs_give_nan_with_a_warning(pred, mos, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="feval_core.evaluate.metrics"):
        table = correlation_table(pred, mos)
        assert all(math.isnan(f(pred, mos)) for f in (srcc, krcc, plcc, plcc_fitted))
    assert all(math.isnan(table[k]) for k in ("srcc", "krcc", "plcc", "plcc_fit"))
    assert "returning NaN" in caplog.text


def test_tiny_and_huge_values_stay_exact() -> None:
    assert plcc([0, 0, 1.0], [0, 1e-200, 0]) == pytest.approx(-0.5)
    assert plcc([1e300, 2e300, 3e300], [1, 2, 3.5]) == pytest.approx(stats.pearsonr([1, 2, 3], [1, 2, 3.5])[0])


def test_length_mismatch_raises() -> None:
    with pytest.raises(InputMismatchError, match="3 predictions but 2"):
        srcc([1, 2, 3], [1, 2])


def test_logistic_fit_improves_plcc_on_a_monotonic_nonlinear_relation() -> None:
    rng = np.random.default_rng(0)
    pred = rng.uniform(-4, 4, size=800)
    mos = 100 / (1 + np.exp(-1.5 * pred)) + rng.normal(scale=3, size=pred.size)
    raw, fitted = plcc(pred, mos), plcc_fitted(pred, mos)
    assert fitted > raw + 0.02 and fitted > 0.98
    b1, b2, b3, b4 = fit_logistic4(pred, mos)
    assert b1 == pytest.approx(100, abs=5) and b2 == pytest.approx(0, abs=5) and abs(b3) < 0.3
    assert abs(b4) == pytest.approx(1 / 1.5, rel=0.2)
    assert correlation_table(pred, mos)["plcc_fit"] == pytest.approx(fitted)
    # a falling relation (lower-is-better metric) fits too
    assert plcc_fitted(-pred, mos) == pytest.approx(fitted, abs=1e-4)


def test_logistic4_formula_and_extremes() -> None:
    assert logistic4(0.0, 10.0, 2.0, 0.0, 1.0) == pytest.approx(6.0)
    assert logistic4(3.0, 10.0, 2.0, 1.0, -2.0) == pytest.approx(8.0 / (1 + math.exp(-1.0)) + 2.0)
    out = logistic4(np.array([-1e6, 1e6]), 100.0, 0.0, 0.0, 1e-3)  # no overflow
    assert np.allclose(out, [0.0, 100.0])


def test_fit_failure_falls_back_to_raw(monkeypatch, caplog) -> None:
    from feval_core.evaluate import metrics

    def boom(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found")

    monkeypatch.setattr(metrics, "curve_fit", boom)
    x, y = _data(50, "none", seed=3)
    with caplog.at_level(logging.WARNING, logger="feval_core.evaluate.metrics"):
        assert np.isnan(fit_logistic4(x, y)).all()
        assert plcc_fitted(x, y) == pytest.approx(plcc(x, y))
    assert "logistic fit failed" in caplog.text


@pytest.mark.parametrize("n", [3, 4])
def test_too_few_pairs_for_the_logistic_fit_fall_back_to_raw(n: int, caplog) -> None:
    """Four parameters need more than four points (scipy raises a TypeError below that, e.g. on a tiny
    validation split); the table still gets SRCC/KRCC/PLCC and the raw PLCC as the fitted one."""
    x, y = np.array([1.0, 2.0, 4.0, 3.0][:n]), np.array([10.0, 30.0, 35.0, 20.0][:n])
    with caplog.at_level(logging.WARNING, logger="feval_core.evaluate.metrics"):
        assert np.isnan(fit_logistic4(x, y)).all()
        table = correlation_table(x, y)
    assert "needs more than 4 pairs" in caplog.text
    assert table["plcc_fit"] == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-9)
    assert table["srcc"] == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-9)
