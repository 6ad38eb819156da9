"""Evaluating a scorer against opinion scores the way the paper reports it.

:func:`evaluate` scores every manifest row on the dimensions it has a MOS for and returns an
:class:`EvalReport`: one table row per task x dimension (plus ``all`` per dimension) with SRCC, KRCC, PLCC
of the raw predictions and PLCC after the 4-parameter logistic fit of IQA work, and the predictions
themselves. The report prints as an aligned table and saves as CSV, Markdown, JSON Lines predictions and one
scatter plot (prediction vs MOS, fitted curve) per dimension.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.manifest import TASKS, ManifestRow, reference_of
from ..dimensions import DIMENSIONS
from .metrics import correlation_table, fit_logistic4, logistic4

logger = logging.getLogger(__name__)

ALL_TASKS = "all"
METRICS: tuple[str, ...] = ("srcc", "krcc", "plcc", "plcc_fit")
METRIC_TITLES = {"srcc": "SRCC", "krcc": "KRCC", "plcc": "PLCC", "plcc_fit": "PLCC (fit)"}
TABLE_CSV, TABLE_MD, PREDICTIONS = "eval_table.csv", "eval_table.md", "predictions.jsonl"
PAPER_FEVAL: dict[tuple[str, str], tuple[float, float, float]] = {
    ("generation", "quality"): (0.8486, 0.6670, 0.9085),
    ("generation", "authenticity"): (0.8312, 0.6585, 0.8578),
    ("generation", "correspondence"): (0.8471, 0.6637, 0.9106),
    ("customization", "quality"): (0.9462, 0.7961, 0.9461),
    ("customization", "identity"): (0.9188, 0.7640, 0.9322),
    ("customization", "correspondence"): (0.9460, 0.7959, 0.9457),
}
"""F-Eval's SRCC / KRCC / PLCC on the FaceQ test sets as the paper reports them (F-Bench project page), for the
"paper" column. Restoration is reported there per synthetic / real-world subset, which a manifest does not
tell apart, so it has no entry."""


@dataclass
class Prediction:
    """One scored (image, dimension) pair; ``pred`` is NaN when the image could not be scored."""

    image: str
    task: str
    dim: str
    mos: float
    pred: float
    error: str | None = None


@dataclass
class EvalReport:
    """Correlations per task x dimension (``table``) and the predictions they come from."""

    table: list[dict[str, Any]]
    predictions: list[Prediction] = field(default_factory=list)

    def row(self, task: str, dim: str) -> dict[str, Any]:
        """The table row of ``task`` (or ``"all"``) and ``dim``; KeyError if there is none."""
        for r in self.table:
            if r["task"] == task and r["dimension"] == dim:
                return r
        raise KeyError(f"no table row for task {task!r}, dimension {dim!r}")

    def format(self, style: str = "text") -> str:
        """The table as aligned ``"text"`` or ``"markdown"``."""
        return format_table(self.table, style)

    def save(self, out_dir: str | Path, *, plots: bool = True) -> dict[str, Path]:
        """Write ``eval_table.csv``, ``eval_table.md``, ``predictions.jsonl`` and ``scatter_<dim>.png``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"csv": out / TABLE_CSV, "markdown": out / TABLE_MD, "predictions": out / PREDICTIONS}
        with paths["csv"].open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["task", "dimension", "n", *METRICS])
            for r in self.table:
                w.writerow([r["task"], r["dimension"], r["n"], *(_csv_num(r[m]) for m in METRICS)])
        paths["markdown"].write_text(self.format("markdown") + "\n", encoding="utf-8")
        with paths["predictions"].open("w", encoding="utf-8") as fh:
            for p in self.predictions:
                rec = {"image": p.image, "task": p.task, "dimension": p.dim, "mos": p.mos,
                       "pred": None if math.isnan(p.pred) else round(p.pred, 4), "error": p.error}
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        if plots:
            for dim, path in plot_scatter(self.predictions, out).items():
                paths[f"scatter_{dim}"] = path
        return paths


def _csv_num(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6f}"


def predict(scorer: Any, rows: Sequence[ManifestRow], *, dims: Sequence[str] | None = None, batch_size: int = 8,
            progress: bool = True) -> list[Prediction]:
    """Score each row on the dimensions it has a MOS for (and the scorer scores); one :class:`Prediction` each.

    Rows are grouped by their set of dimensions so every image runs once, with exactly its own questions.
    """
    from tqdm.auto import tqdm

    wanted = [d for d in (dims or DIMENSIONS) if d in scorer.config.dims]
    skipped = sorted({d for r in rows for d in r.mos if d not in wanted and (dims is None or d in dims)})
    if skipped:
        logger.warning("the model does not score %s; those MOS are left out", ", ".join(skipped))
    groups: dict[tuple[str, ...], list[ManifestRow]] = {}
    for r in rows:
        key = tuple(d for d in wanted if d in r.mos)
        if key:
            groups.setdefault(key, []).append(r)
    preds: list[Prediction] = []
    with tqdm(total=sum(len(g) for g in groups.values()), desc="scoring", unit="img",
              disable=not progress or None) as bar:
        for key, group in groups.items():
            for start in range(0, len(group), batch_size * 4):
                chunk = group[start:start + batch_size * 4]
                res = scorer.score([str(r.image) for r in chunk], prompts=[r.prompt for r in chunk],
                                   refs=[_str_or_none(reference_of(r)) for r in chunk], dims=list(key),
                                   batch_size=batch_size, lq=[_str_or_none(r.lq) for r in chunk])
                for i, r in enumerate(chunk):
                    for d in key:
                        v = float(res.scores[i, DIMENSIONS.index(d)])
                        err = res.errors[i]
                        if math.isnan(v) and err is None and res.warnings and res.warnings[i]:
                            err = res.warnings[i][-1]
                        preds.append(Prediction(str(r.image), r.task, d, float(r.mos[d]), v, err))
                bar.update(len(chunk))
    failed = sum(1 for p in preds if math.isnan(p.pred))
    if failed:
        logger.warning("%d of %d (image, dimension) pairs got no score and are left out of the metrics",
                       failed, len(preds))
    return preds


def _str_or_none(p: Path | None) -> str | None:
    return None if p is None else str(p)


def correlation_rows(preds: Sequence[Prediction]) -> list[dict[str, Any]]:
    """Table rows: each task present (in :data:`TASKS` order) x dimension, then ``all`` x dimension."""
    table: list[dict[str, Any]] = []
    tasks = [t for t in TASKS if any(p.task == t for p in preds)]
    dims = [d for d in DIMENSIONS if any(p.dim == d for p in preds)]
    for task in [*tasks, ALL_TASKS]:
        if task == ALL_TASKS and len(tasks) < 2:
            continue
        for dim in dims:
            sel = [p for p in preds if p.dim == dim and (task == ALL_TASKS or p.task == task)]
            if not sel:
                continue
            t = correlation_table([p.pred for p in sel], [p.mos for p in sel])
            table.append({"task": task, "dimension": dim, "n": t["n"], **{m: t[m] for m in METRICS}})
    return table


def evaluate(scorer: Any, rows: Sequence[ManifestRow], *, dims: Sequence[str] | None = None, batch_size: int = 8,
             progress: bool = True) -> EvalReport:
    """Score ``rows`` with ``scorer`` and correlate with their MOS (see the module docstring)."""
    preds = predict(scorer, rows, dims=dims, batch_size=batch_size, progress=progress)
    return EvalReport(correlation_rows(preds), preds)


def format_table(table: Sequence[dict[str, Any]], style: str = "text") -> str:
    """Rows task x dimension, columns N, SRCC, KRCC, PLCC, PLCC (fit), and the paper's F-Eval numbers where it
    reports the same task and dimension (:data:`PAPER_FEVAL`); ``style`` is ``text`` or ``markdown``."""
    if style not in ("text", "markdown"):
        raise ValueError(f"style must be 'text' or 'markdown', got {style!r}")
    header = ["Task", "Dimension", "N", *(METRIC_TITLES[m] for m in METRICS)]
    body = [[r["task"], r["dimension"], str(r["n"]), *(_fmt(r[m]) for m in METRICS)] for r in table]
    if any((r["task"], r["dimension"]) in PAPER_FEVAL for r in table):
        header.append("Paper F-Eval SRCC/KRCC/PLCC")
        for r, cells in zip(table, body):
            ref = PAPER_FEVAL.get((r["task"], r["dimension"]))
            cells.append("/".join(f"{v:.4f}" for v in ref) if ref else "")
    if style == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt_row = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join([fmt_row(header), rule, *(fmt_row(r) for r in body)])


def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def plot_scatter(preds: Sequence[Prediction], out_dir: str | Path) -> dict[str, Path]:
    """One PNG per dimension: prediction (x) vs MOS (y), one colour per task, with the fitted logistic curve."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    written: dict[str, Path] = {}
    for dim in DIMENSIONS:
        sel = [p for p in preds if p.dim == dim and math.isfinite(p.pred)]
        if not sel:
            continue
        fig = Figure(figsize=(4.8, 4.4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        for task in TASKS:
            pts = [(p.pred, p.mos) for p in sel if p.task == task]
            if pts:
                x, y = zip(*pts)
                ax.scatter(x, y, s=10, alpha=0.6, label=f"{task} ({len(pts)})")
        x_all = np.array([p.pred for p in sel])
        y_all = np.array([p.mos for p in sel])
        t = correlation_table(x_all, y_all)
        params = fit_logistic4(x_all, y_all)
        if np.isfinite(params).all():
            grid = np.linspace(x_all.min(), x_all.max(), 200)
            ax.plot(grid, logistic4(grid, *params), color="black", linewidth=1.2, label="logistic fit")
        ax.set_xlabel("F-Eval prediction (0-100)")
        ax.set_ylabel("MOS (0-100)")
        ax.set_title(f"{dim}: SRCC {_fmt(t['srcc'])}, PLCC {_fmt(t['plcc'])} (n={t['n']})", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        path = out / f"scatter_{dim}.png"
        fig.savefig(path)
        written[dim] = path
    return written
