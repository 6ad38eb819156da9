"""MR-FIQA quality labels without raters: the agreement of multiple reference representations (seed 003).

Three parts per face, each kept in the output so it can be inspected:

* ``embedding`` — cosine of the face's recognition embedding to the mean embedding of its identity's reference images
  (images marked ``ref``; else those with every known level 0; else all of the identity's images; a reference is
  compared with the mean of the *other* references);
* ``vl`` — a vision-language similarity to "a high-resolution clear frontal face" (:mod:`.vl`);
* ``rank`` — rank scores over the known degradation levels: per factor ``1 - level / max level in the set``, averaged
  over the factors given (MR-FIQA uses yaw, downsampling and blur).

Each part is turned into its percentile within the set (0..1) so that the three share one scale; the label is the
weighted mean of the percentiles of the parts a face has, times 100. The weights are chosen by measurement:
:func:`fit_weights` searches the simplex for the weights whose label has the highest SRCC with the known severity of a
synthetic set (``feval fiqa synth`` writes it); without a fit the parts weigh the same.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ManifestError

logger = logging.getLogger(__name__)

PARTS = ("embedding", "vl", "rank")
PAPER_RANK_FACTORS = ("yaw", "downsample", "blur")
LABEL_KEY = "mr_label"
WEIGHTS_NAME = "mr_weights.json"


@dataclass
class LabelItem:
    """One image to label: its path, identity, whether it is a reference, known levels and (synthetic) severity."""

    path: str
    identity: str
    ref: bool = False
    levels: dict[str, int] | None = None
    severity: float | None = None


def read_label_input(source: str | Path) -> list[LabelItem]:
    """Identity folders (``ROOT/<identity>/<image>``; ``ROOT/manifest.jsonl`` is used when present) or a JSON Lines
    manifest ``{"image", "identity", "ref"?, "levels"?: {factor: level}, "severity"?}`` (paths relative to it)."""
    source = Path(source).expanduser()
    if source.is_dir() and (source / "manifest.jsonl").is_file():
        source = source / "manifest.jsonl"
    if source.is_dir():
        from .data import identity_folders

        return [LabelItem(s.path, str(s.identity)) for s in identity_folders(source)]
    if not source.is_file():
        raise ManifestError(f"{source}: no such file or folder; give identity folders or a JSON Lines manifest")
    items = []
    for n, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            path = Path(str(row["image"]))
            identity = str(row["identity"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"{source} line {n}: expected a JSON object with 'image' and 'identity' "
                                f"({exc})") from exc
        levels = row.get("levels")
        if levels is not None and not (isinstance(levels, dict) and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in levels.values())):
            raise ManifestError(f"{source} line {n}: 'levels' must map factor names to integer levels >= 0")
        sev = row.get("severity")
        items.append(LabelItem(str(path if path.is_absolute() else source.parent / path), identity,
                               bool(row.get("ref", False)), levels, None if sev is None else float(sev)))
    if len({i.identity for i in items}) < 1:
        raise ManifestError(f"{source}: no rows")
    return items


def embedding_part(items: Sequence[LabelItem], embeddings: np.ndarray) -> np.ndarray:
    """Cosine of each face to the mean embedding of its identity's references (NaN where the face is missing)."""
    out = np.full(len(items), np.nan)
    by_id: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_id.setdefault(it.identity, []).append(i)
    for members in by_id.values():
        ok = [i for i in members if np.isfinite(embeddings[i]).all()]
        refs = [i for i in ok if items[i].ref] or \
            [i for i in ok if items[i].levels is not None and not any(items[i].levels.values())] or ok
        if not refs:
            continue
        total = embeddings[refs].astype(np.float64).sum(axis=0)
        for i in ok:
            mean = total - embeddings[i] if i in refs else total
            if i in refs and len(refs) == 1:
                out[i] = 1.0  # the only reference: itself
                continue
            norm = np.linalg.norm(mean)
            out[i] = float(embeddings[i] @ mean / norm) if norm > 0 else np.nan
    return out


def rank_part(items: Sequence[LabelItem], factors: Sequence[str] = PAPER_RANK_FACTORS) -> np.ndarray:
    """Mean over ``factors`` of ``1 - level / max level in the set`` (NaN for images without levels)."""
    present = [f for f in factors if any(it.levels and it.levels.get(f, 0) > 0 for it in items)]
    top = {f: max(it.levels.get(f, 0) for it in items if it.levels) for f in present}
    out = np.full(len(items), np.nan)
    if not present:
        return out
    for i, it in enumerate(items):
        if it.levels is not None:
            out[i] = float(np.mean([1 - it.levels.get(f, 0) / top[f] for f in present]))
    return out


def percentile(x: np.ndarray) -> np.ndarray:
    """Each finite value's percentile within the finite values (ties share their mean rank), in [0, 1]; NaN stays."""
    from scipy.stats import rankdata

    x = np.asarray(x, np.float64)
    out = np.full(x.shape, np.nan)
    ok = np.isfinite(x)
    if ok.sum() == 1:
        out[ok] = 0.5
    elif ok.any():
        out[ok] = (rankdata(x[ok]) - 1) / (ok.sum() - 1)
    return out


def combine(normed: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Labels on 0..100: the weighted mean of each face's finite normalised parts (NaN when it has none)."""
    w = np.asarray(weights, np.float64)[None, :] * np.isfinite(normed)
    total = w.sum(axis=1)
    num = (np.nan_to_num(normed) * w).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 100.0 * num / total, np.nan)


def _srcc(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return math.nan
    return float(spearmanr(a[ok], b[ok]).statistic)


def fit_weights(normed: np.ndarray, severity: np.ndarray, step: float = 0.05) -> tuple[list[float], float]:
    """The weights on the simplex (grid of ``step``) whose label agrees best (SRCC) with low severity."""
    n = int(round(1 / step))
    best, best_r = None, -math.inf
    for a, b in itertools.product(range(n + 1), repeat=2):
        if a + b > n:
            continue
        w = [a / n, b / n, (n - a - b) / n]
        r = _srcc(combine(normed, w), -np.asarray(severity, np.float64))
        if np.isfinite(r) and r > best_r + 1e-12:
            best, best_r = w, r
    if best is None:
        raise ConfigError("cannot fit weights: the severities (or all parts) are constant or missing")
    return best, best_r


@dataclass
class MRWeights:
    """``mr_weights.json``: the weights of the parts, how they were chosen, and what they measured."""

    weights: dict[str, float] = field(default_factory=lambda: {p: 1.0 for p in PARTS})
    chosen_by: str = "equal weights (no fit)"
    rank_factors: list[str] = field(default_factory=lambda: list(PAPER_RANK_FACTORS))
    vl_source: str | None = None
    srcc_vs_severity: dict[str, float] = field(default_factory=dict)

    def vector(self) -> list[float]:
        unknown = set(self.weights) - set(PARTS)
        if unknown or any(not isinstance(v, (int, float)) or v < 0 for v in self.weights.values()):
            raise ConfigError(f"weights must map {PARTS} to numbers >= 0, got {self.weights}")
        return [float(self.weights.get(p, 0.0)) for p in PARTS]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> MRWeights:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: not an {WEIGHTS_NAME} written by `feval fiqa label` ({exc})") from exc


@dataclass
class MRLabels:
    """Labels of a set: raw and normalised parts, labels (0-100), errors, and the weights used."""

    items: list[LabelItem]
    raw: np.ndarray  # [N, 3] in PARTS order, NaN = missing
    normed: np.ndarray  # [N, 3]
    label: np.ndarray  # [N]
    errors: list[str | None]
    weights: MRWeights

    def records(self) -> list[dict[str, Any]]:
        rows = []
        for i, it in enumerate(self.items):
            row: dict[str, Any] = {"image": it.path, "identity": it.identity,
                                   LABEL_KEY: _num(self.label[i], 3) if self.errors[i] is None else None}
            for k, p in enumerate(PARTS):
                row[f"mr_{p}"] = _num(self.raw[i, k], 5)
                row[f"mr_{p}_pct"] = _num(self.normed[i, k], 4)
            row["error"] = self.errors[i]
            rows.append(row)
        return rows


def _num(v: float, digits: int) -> float | None:
    return None if not np.isfinite(v) else round(float(v), digits)


def measure_parts(items: Sequence[LabelItem], encoder: Any, vl: Callable[[Sequence[np.ndarray]], np.ndarray] | None,
                  rank_factors: Sequence[str] = PAPER_RANK_FACTORS,
                  progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, list[str | None]]:
    """Raw parts [N, 3] of every item (NaN where not measurable) and an error per item (None when labelled)."""
    from ..errors import ImageInputError
    from ..inputs.images import load_image

    n = len(items)
    emb: np.ndarray | None = None
    errors: list[str | None] = [None] * n
    images: list[np.ndarray | None] = [None] * n
    for i, it in enumerate(items):
        try:
            image = np.asarray(load_image(it.path).convert("RGB"))
            info = encoder.analyze(image)
        except (ImageInputError, OSError) as exc:
            errors[i] = str(exc)
        else:
            if info.has_face:
                images[i] = image
                if emb is None:
                    emb = np.full((n, info.embedding.shape[0]), np.nan, np.float32)
                emb[i] = info.embedding
            else:
                errors[i] = "no face detected; not labelled"
        if progress is not None:
            progress(1)
    raw = np.full((n, len(PARTS)), np.nan)
    if emb is not None:
        raw[:, 0] = embedding_part(items, emb)
    ok = [i for i in range(n) if images[i] is not None]
    if vl is not None and ok:
        raw[ok, 1] = vl([images[i] for i in ok])
    raw[:, 2] = rank_part(items, rank_factors)
    raw[[i for i in range(n) if errors[i] is not None]] = np.nan
    return raw, errors


def label_set(items: Sequence[LabelItem], raw: np.ndarray, errors: list[str | None], weights: MRWeights | None = None,
              fit: bool = False) -> MRLabels:
    """Normalise the parts and combine them: with ``fit``, weights fitted on the items' known severities."""
    normed = np.stack([percentile(raw[:, k]) for k in range(len(PARTS))], axis=1)
    weights = weights or MRWeights()
    sev = np.array([np.nan if it.severity is None else it.severity for it in items], np.float64)
    if fit:
        if not np.isfinite(sev).any():
            raise ConfigError("--fit-weights needs known severities: label a set from `feval fiqa synth` (its "
                              "manifest has 'severity'), or give --weights")
        vector, r = fit_weights(normed, sev)
        vector = [w if np.isfinite(normed[:, k]).any() else 0.0 for k, w in enumerate(vector)]  # absent parts
        weights.weights = dict(zip(PARTS, vector))
        weights.chosen_by = (f"fitted: highest SRCC with -severity over a 0.05 simplex grid on "
                             f"{int(np.isfinite(sev).sum())} images")
    label = combine(normed, weights.vector())
    if np.isfinite(sev).any():
        weights.srcc_vs_severity = {p: _srcc(normed[:, k], -sev) for k, p in enumerate(PARTS)}
        weights.srcc_vs_severity["label"] = _srcc(label, -sev)
    return MRLabels(list(items), raw, normed, label, errors, weights)


def write_labels(labels: MRLabels, out: str | Path, feval_manifest: str | Path | None = None) -> list[Path]:
    """``out`` (JSON Lines, one row per image with its parts) and ``mr_weights.json`` beside it; with
    ``feval_manifest``, an F-Eval training manifest whose ``mos.quality`` is the label (``feval train``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in labels.records()), encoding="utf-8")
    labels.weights.save(out.parent / WEIGHTS_NAME)
    written = [out, out.parent / WEIGHTS_NAME]
    if feval_manifest is not None:
        fm = Path(feval_manifest)
        rows = [{"image": str(Path(it.path).resolve()), "task": "generation", "mos": {"quality": round(float(v), 3)}}
                for it, v, e in zip(labels.items, labels.label, labels.errors) if e is None and np.isfinite(v)]
        fm.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        written.append(fm)
    return written


def read_labels(path: str | Path, key: str = LABEL_KEY) -> dict[str, float]:
    """``{resolved image path: label}`` from JSON Lines with an ``image`` and a numeric ``key`` (rows without one
    are left out); for ``feval fiqa train --labels`` and the pre-filter."""
    path = Path(path)
    out: dict[str, float] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or "image" not in row:
            raise ManifestError(f"{path} line {n}: expected a JSON object with 'image'")
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            img = Path(str(row["image"]))
            out[str((img if img.is_absolute() else path.parent / img).resolve())] = float(v)
    if not out:
        raise ManifestError(f"{path}: no rows with a number under {key!r}; label with `feval fiqa label`, or name "
                            "the column with --label-key")
    return out
