"""``feval fiqa eval``: EDC curves and pAUC of quality scores side by side, over identity folders or a pairs list.

Comparisons are made with the face pack's recognizer (cosine of its embeddings): mated ones between images of
the same person, non-mated ones between different people (all of them, or a seeded sample of ``max_nonmated``).
The threshold sits at the target FMR on the non-mated scores; the EDC is the FNMR as the lowest-quality
comparisons are discarded (:mod:`.edc`). Each quality column is one method: ViT-FIQA's utility, F-Eval's quality,
the detector's confidence, the recognizer's embedding norm, random discard, and any columns of a JSONL file.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data import AlignedFaces, Sample
from .edc import EDCCurve, edc, pair_quality, threshold_at_fmr

logger = logging.getLogger(__name__)

DISCARDS = (0.2, 0.3)


@dataclass
class Comparisons:
    """Pairs of aligned faces (indices into :class:`AlignedFaces`), whether they are mated, and their scores."""

    a: np.ndarray
    b: np.ndarray
    mated: np.ndarray
    scores: np.ndarray
    dropped: int = 0  # pairs of a list whose image was left out (no face, unreadable)


def _cosines(emb: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", emb[a].astype(np.float64), emb[b].astype(np.float64))


def identity_comparisons(faces: AlignedFaces, max_nonmated: int = 2_000_000, seed: int = 0) -> Comparisons:
    """All mated pairs, and all non-mated pairs (or a seeded sample of ``max_nonmated`` of them)."""
    ids = np.array([s.identity for s in faces.samples])
    n = len(ids)
    i, j = np.triu_indices(n, k=1)
    same = ids[i] == ids[j]
    ma, mb = i[same], j[same]
    na, nb = i[~same], j[~same]
    if len(na) > max_nonmated:
        pick = np.sort(np.random.default_rng(seed).choice(len(na), size=max_nonmated, replace=False))
        na, nb = na[pick], nb[pick]
    a, b = np.concatenate([ma, na]), np.concatenate([mb, nb])
    mated = np.concatenate([np.ones(len(ma), bool), np.zeros(len(na), bool)])
    return Comparisons(a, b, mated, _cosines(faces.embeddings, a, b))


def pair_comparisons(faces: AlignedFaces, samples: Sequence[Sample], pairs: Sequence[tuple[int, int, bool]]
                     ) -> Comparisons:
    """The comparisons of a pairs list (:func:`~.data.read_pairs`); pairs with an image left out are dropped."""
    where = {s.path: k for k, s in enumerate(faces.samples)}
    kept = [(where[samples[x].path], where[samples[y].path], m) for x, y, m in pairs
            if samples[x].path in where and samples[y].path in where]
    a = np.array([k[0] for k in kept], np.int64)
    b = np.array([k[1] for k in kept], np.int64)
    return Comparisons(a, b, np.array([k[2] for k in kept], bool), _cosines(faces.embeddings, a, b),
                       dropped=len(pairs) - len(kept))


def read_quality_jsonl(path: str | Path, samples: Sequence[Sample]) -> dict[str, np.ndarray]:
    """Quality columns from JSON Lines ``{"image": PATH, "<method>": number, ...}`` (e.g. ``feval score`` output);
    image paths as given or relative to the file's folder. An image without a value is NaN (lowest quality)."""
    path = Path(path)
    where = {str(Path(s.path).resolve()): k for k, s in enumerate(samples)}
    columns: dict[str, np.ndarray] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or "image" not in row:
            raise ValueError(f"{path} line {n}: expected a JSON object with an 'image' key")
        img = Path(str(row["image"]))
        key = next((str(p.resolve()) for p in (img, path.parent / img) if str(p.resolve()) in where), None)
        if key is None:
            continue
        for name, value in row.items():
            if name in ("image", "faces", "error", "warnings") or isinstance(value, bool) \
                    or not isinstance(value, (int, float)):
                continue
            columns.setdefault(name, np.full(len(samples), np.nan))[where[key]] = float(value)
    return columns


@dataclass
class FIQAEvalReport:
    """pAUC per method, the threshold and what it was computed on."""

    rows: list[dict[str, Any]]
    curves: dict[str, EDCCurve]
    threshold: float
    fmr: float
    counts: dict[str, int] = field(default_factory=dict)

    def format(self) -> str:
        heads = ["method"] + [f"pAUC@{int(d * 100)}%" for d in DISCARDS] + \
                [f"vs random @{int(d * 100)}%" for d in DISCARDS] + ["FNMR@0"]
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        for r in self.rows:
            cells = [r["method"]] + [f"{r[f'pauc_{int(d * 100)}']:.4f}" for d in DISCARDS] + \
                    [f"{r[f'ratio_{int(d * 100)}']:.3f}" for d in DISCARDS] + [f"{r['fnmr0']:.4f}"]
            lines.append("| " + " | ".join(cells) + " |")
        c = self.counts
        lines.append(f"\nthreshold {self.threshold:.4f} (cosine) at FMR {self.fmr:g} on {c.get('nonmated', 0)} "
                     f"non-mated comparisons; {c.get('mated', 0)} mated comparisons of {c.get('samples', 0)} faces "
                     f"({c.get('skipped', 0)} images left out); 'vs random' = pAUC / (FNMR@0 x discard), lower is "
                     "better")
        return "\n".join(lines)

    def save(self, out: str | Path, plot: bool = True) -> dict[str, Path]:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"csv": out / "fiqa_eval.csv", "md": out / "fiqa_eval.md", "json": out / "fiqa_eval.json"}
        with paths["csv"].open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)
        paths["md"].write_text(self.format() + "\n", encoding="utf-8")
        paths["json"].write_text(json.dumps({"rows": self.rows, "threshold": self.threshold, "fmr": self.fmr,
                                             "counts": self.counts}, indent=2) + "\n", encoding="utf-8")
        if plot:
            paths["plot"] = plot_edc(self.curves, out / "edc.png", self.fmr)
        return paths


def evaluate_fiqa(faces: AlignedFaces, comps: Comparisons, columns: Mapping[str, np.ndarray], fmr: float = 1e-3
                  ) -> FIQAEvalReport:
    """EDC and pAUC at 20% / 30% discard of every quality column (one value per aligned face)."""
    nonmated = comps.scores[~comps.mated]
    mated = comps.scores[comps.mated]
    if mated.size == 0 or nonmated.size == 0:
        raise ValueError("EDC needs mated and non-mated comparisons; give at least two images of some people and "
                         "two different people")
    if nonmated.size * fmr < 1:
        logger.warning("FMR %g needs at least %d non-mated comparisons for one false match; there are %d, so the "
                       "threshold sits above every non-mated score", fmr, math.ceil(1 / fmr), nonmated.size)
    tau = threshold_at_fmr(nonmated, fmr)
    ma, mb = comps.a[comps.mated], comps.b[comps.mated]
    rows, curves = [], {}
    for name, q in columns.items():
        q = np.asarray(q, np.float64)
        curve = edc(mated, pair_quality(q[ma], q[mb]), tau)
        curves[name] = curve
        row: dict[str, Any] = {"method": name}
        for d in DISCARDS:
            row[f"pauc_{int(d * 100)}"] = curve.pauc(d)
        for d in DISCARDS:
            rand = curve.random_pauc(d)
            row[f"ratio_{int(d * 100)}"] = curve.pauc(d) / rand if rand > 0 else math.nan
        row["fnmr0"] = curve.start
        row["assessed"] = int(np.isfinite(q).sum())
        rows.append(row)
    counts = {"mated": int(mated.size), "nonmated": int(nonmated.size), "samples": len(faces.samples),
              "skipped": len(faces.skipped), "dropped_pairs": comps.dropped}
    return FIQAEvalReport(rows, curves, tau, fmr, counts)


def plot_edc(curves: Mapping[str, EDCCurve], path: Path, fmr: float, upto: float = 0.5) -> Path:
    """One figure: FNMR against the fraction discarded, a step line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, c in curves.items():
        x = np.append(c.discard[c.discard <= upto], upto)
        y = np.append(c.error[c.discard <= upto], c.error_at(upto))
        ax.step(x, y, where="post", label=name)
    for d in DISCARDS:
        ax.axvline(d, color="grey", lw=0.5, ls=":")
    ax.set(xlabel="fraction of comparisons discarded (lowest quality first)", ylabel=f"FNMR at FMR {fmr:g}",
           title="Error-versus-discard (EDC)", xlim=(0, upto))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def evaluate_dataset(*, data: str | Path | None = None, pairs: str | Path | None = None,
                     model: str | Path | None = None, feval: str | None = None, quality: Sequence[str | Path] = (),
                     fmr: float = 1e-3, face_pack: str = "buffalo_l", face_root: str | Path | None = None,
                     det_size: int = 640, max_nonmated: int = 2_000_000, seed: int = 0, device: str | None = None,
                     progress: bool = True) -> FIQAEvalReport:
    """Align the faces of ``data`` (identity folders) or ``pairs`` (a pairs list), compare them with the face pack's
    recognizer, and compare the quality columns: ViT-FIQA (``model``), F-Eval quality (``feval``), the detector's
    confidence, the embedding norm, random discard and the JSONL files in ``quality``."""
    from tqdm.auto import tqdm

    from ..faces.encoder import FaceEncoder
    from .data import align_faces, identity_folders, read_pairs

    if (data is None) == (pairs is None):
        raise ValueError("give identity folders (data=) or a pairs list (pairs=), not both")
    if data is not None:
        samples, pair_list = identity_folders(data), None
    else:
        samples, pair_list = read_pairs(pairs)
    encoder = FaceEncoder(face_pack, root=face_root, device=device or "cpu", det_size=(det_size, det_size))
    with tqdm(total=len(samples), desc="aligning faces", unit="img", disable=(not progress) or None) as bar:
        faces = align_faces(samples, encoder, bar.update)
    comps = identity_comparisons(faces, max_nonmated, seed) if pair_list is None else \
        pair_comparisons(faces, samples, pair_list)
    columns: dict[str, np.ndarray] = {}
    if model is not None:
        from .scorer import FIQAScorer

        columns["ViT-FIQA utility"] = FIQAScorer.from_pretrained(model, device=device).utility_of_crops(
            faces.crops).numpy()
    if feval is not None:
        from ..dimensions import DIMENSIONS
        from ..scoring.scorer import FEvalScorer

        res = FEvalScorer.from_pretrained(feval, device=device).score([s.path for s in faces.samples],
                                                                        dims=("quality",))
        columns["F-Eval quality"] = res.scores[:, DIMENSIONS.index("quality")].numpy()
    columns["detector confidence"] = faces.det_scores
    columns["embedding norm"] = faces.norms
    columns["random"] = np.random.default_rng(seed).uniform(size=len(faces.samples))
    for path in quality:
        columns.update(read_quality_jsonl(path, faces.samples))
    return evaluate_fiqa(faces, comps, columns, fmr)
