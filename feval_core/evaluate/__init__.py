"""Judging a scorer: correlation metrics, the paper-shaped evaluation table, the F-Bench leaderboard.

* :mod:`.metrics` — SRCC, KRCC, PLCC (raw and after the 4-parameter logistic fit);
* :mod:`.report` — :func:`evaluate` a scorer on a manifest -> :class:`EvalReport` (tables, plots);
* :mod:`.bench` — F-Bench over your generators: leaderboard with confidence intervals, radar chart.

Imports :mod:`feval_core.data`, :mod:`feval_core.inputs` and the base modules (a scorer is passed in).
"""

from __future__ import annotations

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "evaluate": "report", "EvalReport": "report", "Prediction": "report", "predict": "report",
    "correlation_rows": "report", "format_table": "report", "plot_scatter": "report", "ALL_TASKS": "report",
    "METRIC_TITLES": "report", "correlation_table": "metrics",
    "leaderboard": "bench", "collect_bench": "bench", "score_bench": "bench",
})
