"""F-Bench for your own generators: score one folder of images per generator and rank them per dimension.

Layout of a bench folder (``ROOT``)::

    ROOT/
      prompts.jsonl | prompts.txt     optional, shared by every generator (matched by image stem)
      refs/<stem>.png                 optional reference faces (identity), shared
      <generator>/
        001.png 002.png ...
        001.txt                       optional sidecar prompt of 001.png
        prompts.jsonl | prompts.txt   optional, this generator's prompts (and refs)
        refs/<stem>.png               optional, this generator's references

``prompts.jsonl`` holds ``{"image": "001.png" or "001", "prompt": "...", "ref": "refs/a.png"?}`` per line
(``ref`` relative to that file's folder); ``prompts.txt`` holds ``001.png<TAB>prompt`` lines. The nearest
source wins: sidecar, then the generator's files, then the shared ones. Images without a prompt get no
correspondence score, images without a reference no identity score (``NaN``, never a made-up number).

:func:`leaderboard` gives per generator and dimension the mean, a 95% confidence interval (Student t or
percentile bootstrap) and the rank; :func:`save_bench` writes it as CSV and Markdown with a radar chart.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.manifest import json_lines
from ..dimensions import DIMENSIONS
from ..errors import ManifestError

logger = logging.getLogger(__name__)

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
CI_METHODS: tuple[str, ...] = ("t", "bootstrap")
OVERALL = "overall"
SCORES_NAME, BOARD_CSV, BOARD_MD, RADAR_PNG = "scores.jsonl", "leaderboard.csv", "leaderboard.md", "radar.png"
_RESERVED = frozenset({"refs", "ref", "references"})


@dataclass(frozen=True)
class BenchImage:
    """One generated image with its generator, prompt and reference face (if any)."""

    generator: str
    path: Path
    prompt: str | None = None
    ref: Path | None = None


@dataclass
class BoardEntry:
    """One generator on one dimension (or ``overall``): mean score, confidence interval, rank (1 = best)."""

    generator: str
    dimension: str
    n: int
    mean: float
    ci_low: float
    ci_high: float
    rank: int | None

    def as_dict(self) -> dict[str, Any]:
        return {"generator": self.generator, "dimension": self.dimension, "n": self.n, "mean": self.mean,
                "ci_low": self.ci_low, "ci_high": self.ci_high, "rank": self.rank}


# -- collecting images ---------------------------------------------------------------------------------
def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                  and not p.name.startswith("."))


def _read_prompt_files(folder: Path) -> dict[str, tuple[str | None, Path | None]]:
    """stem -> (prompt, ref) from ``prompts.jsonl`` / ``prompts.txt`` in ``folder``."""
    table: dict[str, tuple[str | None, Path | None]] = {}
    jl = folder / "prompts.jsonl"
    if jl.is_file():
        for n, obj, bad in json_lines(jl):
            if bad:
                raise ManifestError(f"{jl}:{n}: {bad}; write one object per line like "
                                    '{"image": "001.png", "prompt": "..."}')
            if not isinstance(obj, dict) or not isinstance(obj.get("image"), str):
                raise ManifestError(f'{jl}:{n}: each line needs "image" (file name or stem) and "prompt"')
            prompt = obj.get("prompt")
            if prompt is not None and not isinstance(prompt, str):
                raise ManifestError(f'{jl}:{n}: "prompt" must be a string')
            ref = obj.get("ref")
            ref_path = (folder / ref) if isinstance(ref, str) and ref else None
            if ref_path is not None and not ref_path.is_file():
                raise ManifestError(f"{jl}:{n}: ref {ref_path} not found")
            table[Path(obj["image"]).stem] = (prompt or None, ref_path)
    txt = folder / "prompts.txt"
    if txt.is_file():
        for n, line in enumerate(txt.read_text(encoding="utf-8-sig").splitlines(), 1):
            if not line.strip():
                continue
            if "\t" not in line:
                raise ManifestError(f"{txt}:{n}: expected '<image name><TAB><prompt>'; use prompts.jsonl or "
                                    "sidecar .txt files for other layouts")
            name, prompt = line.split("\t", 1)
            old = table.get(Path(name.strip()).stem, (None, None))
            table[Path(name.strip()).stem] = (prompt.strip() or None, old[1])
    return table


def _refs_in(folder: Path) -> dict[str, Path]:
    d = folder / "refs"
    return {p.stem: p for p in _images(d)} if d.is_dir() else {}


def collect_bench(root: str | Path, *, generators: Sequence[str] | None = None,
                  ref: str | Path | None = None) -> list[BenchImage]:
    """Images of every generator folder under ``root`` (or just ``generators``), with prompts and references.

    ``ref`` is a reference face for every image that has none of its own.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ManifestError(f"bench folder {root} not found; it must hold one folder of images per generator")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name not in _RESERVED
                     and not p.name.startswith("."))
    if generators:
        names = {p.name: p for p in folders}
        missing = [g for g in generators if g not in names]
        if missing:
            raise ManifestError(f"no generator folder {missing} under {root}; found {sorted(names)}")
        folders = [names[g] for g in generators]
    shared = _read_prompt_files(root)
    shared_refs = _refs_in(root)
    default_ref = Path(ref).expanduser() if ref else None
    if default_ref is not None and not default_ref.is_file():
        raise ManifestError(f"reference image {default_ref} not found")
    out: list[BenchImage] = []
    for folder in folders:
        imgs = _images(folder)
        if not imgs:
            logger.warning("%s has no images; skipping it", folder)
            continue
        own = _read_prompt_files(folder)
        own_refs = _refs_in(folder)
        for img in imgs:
            prompt, rref = own.get(img.stem, shared.get(img.stem, (None, None)))
            sidecar = img.with_suffix(".txt")
            if sidecar.is_file():
                prompt = sidecar.read_text(encoding="utf-8-sig").strip() or None
            if rref is None:
                rref = own_refs.get(img.stem) or shared_refs.get(img.stem) or default_ref
            out.append(BenchImage(folder.name, img, prompt, rref))
    if len({b.generator for b in out}) == 0:
        raise ManifestError(f"no generator folders with images under {root}")
    return out


# -- scoring -------------------------------------------------------------------------------------------------
def score_bench(scorer: Any, images: Sequence[BenchImage], *, dims: Sequence[str] | None = None,
                batch_size: int = 8, done: dict[str, dict[str, Any]] | None = None, writer: Any = None,
                progress: bool = True) -> list[dict[str, Any]]:
    """One record per image (``generator``, ``image``, the four scores or None, ``error``), in order.

    ``done`` maps image paths to records of an earlier run (not scored again); new records also go to
    ``writer`` (a :class:`~feval_core.inputs.results.ResultsWriter`) as they arrive.
    """
    from tqdm.auto import tqdm

    done = dict(done or {})
    todo = [b for b in images if str(b.path) not in done]
    with tqdm(total=len(todo), desc="scoring", unit="img", disable=not progress or None) as bar:
        for start in range(0, len(todo), batch_size * 4):
            chunk = todo[start:start + batch_size * 4]
            res = scorer.score([str(b.path) for b in chunk], prompts=[b.prompt for b in chunk],
                               refs=[str(b.ref) if b.ref else None for b in chunk], dims=dims, batch_size=batch_size)
            recs = res.to_records()
            for b, rec in zip(chunk, recs):
                rec["image"] = str(b.path)
                rec = {"generator": b.generator, **rec}
                done[str(b.path)] = rec
            if writer is not None:
                writer.write([done[str(b.path)] for b in chunk])
            bar.update(len(chunk))
    return [done[str(b.path)] for b in images]


# -- statistics ---------------------------------------------------------------------------------------------
def mean_ci(values: Sequence[float], *, method: str = "t", confidence: float = 0.95, n_boot: int = 2000,
            seed: int = 0) -> tuple[float, float, float]:
    """Mean of the finite values and its ``confidence`` interval: Student t, or percentile bootstrap.

    Fewer than two values give a NaN interval.
    """
    if method not in CI_METHODS:
        raise ValueError(f"method must be one of {CI_METHODS}, got {method!r}")
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if x.size < 2:
        return m, math.nan, math.nan
    if method == "t":
        from scipy.stats import t

        half = float(t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
        return m, m - half, m + half
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return m, float(lo), float(hi)


def leaderboard(records: Sequence[dict[str, Any]], *, method: str = "t", confidence: float = 0.95,
                seed: int = 0) -> list[BoardEntry]:
    """Per generator and dimension: n, mean, CI and rank (1 = highest mean; equal means share a rank).

    ``overall`` is each generator's mean over the dimensions every generator was scored on (the mean of its
    per-image averages over those dimensions, with its CI).
    """
    gens = list(dict.fromkeys(r["generator"] for r in records))
    entries: list[BoardEntry] = []
    scored_dims = [d for d in DIMENSIONS
                   if all(any(r.get(d) is not None for r in records if r["generator"] == g) for g in gens)]
    for dim in [*DIMENSIONS, OVERALL]:
        rows: list[BoardEntry] = []
        for g in gens:
            recs = [r for r in records if r["generator"] == g]
            if dim == OVERALL:
                if not scored_dims:
                    continue
                vals = [float(np.mean(v)) for r in recs
                        if (v := [r[d] for d in scored_dims if r.get(d) is not None])]
            else:
                vals = [float(r[dim]) for r in recs if r.get(dim) is not None]
            if not vals:
                continue
            m, lo, hi = mean_ci(vals, method=method, confidence=confidence, seed=seed)
            rows.append(BoardEntry(g, dim, len(vals), m, lo, hi, None))
        ordered = sorted(rows, key=lambda e: -e.mean)
        for e in rows:
            e.rank = 1 + sum(1 for o in ordered if o.mean > e.mean)
        entries += rows
    return entries


# -- output -------------------------------------------------------------------------------------------------
def format_board(board: Sequence[BoardEntry], style: str = "markdown") -> str:
    """Generators as rows (best overall first), dimensions as columns: ``mean ± half-CI (#rank)``."""
    if style not in ("text", "markdown"):
        raise ValueError(f"style must be 'text' or 'markdown', got {style!r}")
    dims = [d for d in [*DIMENSIONS, OVERALL] if any(e.dimension == d for e in board)]
    gens = list(dict.fromkeys(e.generator for e in board))
    by = {(e.generator, e.dimension): e for e in board}
    key = OVERALL if OVERALL in dims else dims[0]
    gens.sort(key=lambda g: by[(g, key)].rank if (g, key) in by and by[(g, key)].rank else 1 << 30)

    def cell(g: str, d: str) -> str:
        e = by.get((g, d))
        if e is None:
            return "n/a"
        half = (e.ci_high - e.ci_low) / 2 if math.isfinite(e.ci_high) else math.nan
        pm = f" ± {half:.2f}" if math.isfinite(half) else ""
        return f"{e.mean:.2f}{pm} (#{e.rank})"

    header = ["Generator", *dims]
    body = [[g, *(cell(g, d) for d in dims)] for g in gens]
    if style == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(dims)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    rows = [header, *body]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def radar_chart(board: Sequence[BoardEntry], path: str | Path, *, title: str = "F-Bench") -> Path:
    """A radar (spider) chart like the paper's: one polygon per generator over the scored dimensions (0-100)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dims = [d for d in DIMENSIONS if any(e.dimension == d for e in board)]
    gens = list(dict.fromkeys(e.generator for e in board))
    by = {(e.generator, e.dimension): e.mean for e in board}
    fig = Figure(figsize=(5.6, 5.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1, projection="polar")
    if len(dims) >= 1:
        angles = np.linspace(0, 2 * np.pi, len(dims), endpoint=False).tolist()
        for g in gens:
            vals = [by.get((g, d), math.nan) for d in dims]
            vals = [0.0 if not math.isfinite(v) else v for v in vals]
            ax.plot(angles + angles[:1], vals + vals[:1], linewidth=1.5, label=g)
            ax.fill(angles + angles[:1], vals + vals[:1], alpha=0.12)
        ax.set_xticks(angles)
        ax.set_xticklabels(dims)
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(loc="upper right", bbox_to_anchor=(1.3, 1.12), fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    return out


def save_bench(board: Sequence[BoardEntry], out_dir: str | Path) -> dict[str, Path]:
    """Write ``leaderboard.csv`` (long format), ``leaderboard.md`` and ``radar.png`` under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / BOARD_CSV, "markdown": out / BOARD_MD, "radar": out / RADAR_PNG}
    with paths["csv"].open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["generator", "dimension", "n", "mean", "ci_low", "ci_high", "rank"])
        for e in board:
            w.writerow([e.generator, e.dimension, e.n, *(_num(v) for v in (e.mean, e.ci_low, e.ci_high)), e.rank])
    paths["markdown"].write_text(format_board(board, "markdown") + "\n", encoding="utf-8")
    radar_chart(board, paths["radar"])
    return paths


def _num(v: float) -> str:
    return "" if not math.isfinite(v) else f"{v:.4f}"
