"""The landmark pre-filter: throughput after detection, agreement with the label it learned, and how much LMM time
``feval score --prefilter`` saves (CPU, offline, tiny face pack and tiny F-Eval).

1. MR labels on a synthetic level set (tiny face pack), a forest trained on them (ONNX), its SRCC with the labels of
   a held-out set of new identities.
2. Throughput after detection: landmark features + the ONNX forest over batches of detected faces, and one face at a
   time (faces/s on this CPU; both measured here, side by side).
3. The LMM time with and without the pre-filter at a threshold that skips about half the faces, in one run: the
   ratio of LMM seconds against the share skipped (the pre-filter's own time counted on top).

    python benchmarks/fiqa_prefilter.py
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.stats import spearmanr

from feval_core.faces.encoder import FaceEncoder
from feval_core.fiqa.landmarks import detect_faces
from feval_core.fiqa.mrlabels import label_set, measure_parts, read_label_input, read_labels, write_labels
from feval_core.fiqa.prefilter import LandmarkPrefilter, train_prefilter
from feval_core.model.config import FaceEncoderConfig
from feval_core.testing.facepack import write_tiny_face_pack
from feval_core.testing.mrfiqa import write_level_set


def _labels(root: Path, enc: FaceEncoder, name: str, seed: int, first: int, args: argparse.Namespace) -> Path:
    items = read_label_input(write_level_set(root / name, args.ids, args.per_id, seed=seed, first_identity=first))
    out = root / name / "labels.jsonl"
    write_labels(label_set(items, *measure_parts(items, enc, None), fit=True), out)
    return out


def throughput(pf: LandmarkPrefilter, faces: object, repeats: int) -> tuple[float, float]:
    batch = {k: np.concatenate([getattr(faces, k)] * repeats) for k in ("found", "kps", "bbox", "det_score")}
    big = type(faces)(batch["found"], batch["kps"], batch["bbox"], batch["det_score"])
    n = int(big.found.sum())
    pf.predict(big.features()[:10])
    t0 = time.perf_counter()
    pf.predict(big.features())
    batched = n / (time.perf_counter() - t0)
    one = type(faces)(faces.found[:1], faces.kps[:1], faces.bbox[:1], faces.det_score[:1])
    t0 = time.perf_counter()
    for _ in range(500):
        pf.predict(one.features())
    return batched, 500 / (time.perf_counter() - t0)


def lmm_ratio(pf: LandmarkPrefilter, folder: Path, ckpt: Path, face_root: Path) -> None:
    from feval_core import FEvalScorer

    scorer = FEvalScorer.from_pretrained(ckpt, device="cpu", face_root=face_root)
    paths = sorted(str(p) for p in folder.glob("*/*.png"))
    scorer.score(paths[:4], batch_size=8)  # warm-up
    t0 = time.perf_counter()
    pre = pf.score(paths)
    pf_s = time.perf_counter() - t0
    t = float(np.nanmedian(pre.values))
    keep = [p for p, v in zip(paths, pre.values) if not v < t]
    t0 = time.perf_counter()
    scorer.score(paths, batch_size=8)
    full = time.perf_counter() - t0
    t0 = time.perf_counter()
    scorer.score(keep, batch_size=8)
    part = time.perf_counter() - t0
    skipped = 1 - len(keep) / len(paths)
    print(f"\n## --prefilter {t:.1f} on {len(paths)} images (tiny F-Eval on CPU, one run)\n")
    print(f"skipped {skipped:.1%}; LMM {full:.2f} s -> {part:.2f} s (ratio {part / full:.3f}, expected "
          f"~{1 - skipped:.3f}); pre-filter incl. detection {pf_s:.2f} s; total with pre-filter "
          f"{(part + pf_s) / full:.3f} of without")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ids", type=int, default=60)
    p.add_argument("--per-id", type=int, default=10)
    p.add_argument("--repeats", type=int, default=100, help="copies of the held-out faces in the batched timing")
    p.add_argument("--lmm-images", type=int, default=6, help="identities of the held-out set scored by the LMM")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_tiny_face_pack(root / "face_pack")
        enc = FaceEncoder("tiny_face", root=root / "face_pack", det_size=(128, 128))
        train_labels = _labels(root, enc, "A", 0, 0, args)
        test_labels = _labels(root, enc, "B", 1, 50_000, args)
        face = FaceEncoderConfig(pack="tiny_face", root=str(root / "face_pack"), det_size=128)
        t0 = time.perf_counter()
        pf = train_prefilter(train_labels, root / "pf", face=face)
        fit_s = time.perf_counter() - t0
        table = read_labels(test_labels)
        paths = list(table)
        faces = detect_faces(enc, [np.asarray(Image.open(q).convert("RGB")) for q in paths])
        pred = pf.predict(faces.features())
        y = np.array([table[q] for q, ok in zip(paths, faces.found) if ok])
        r = spearmanr(pred, y).statistic
        print(f"\n## pre-filter (5-point features, {pf.config.n_estimators} trees, ONNX): trained on "
              f"{pf.config.train_faces} faces in {fit_s:.1f} s (incl. detection)\n")
        print(f"SRCC with the MR label on {len(y)} held-out faces of new identities: {r:.3f}")
        batched, single = throughput(pf, faces, args.repeats)
        print(f"throughput after detection (features + ONNX forest, CPU): {batched:,.0f} faces/s in batches of "
              f"{int(faces.found.sum()) * args.repeats}; {single:,.0f} faces/s one face per call")
        sub = root / "lmm"
        for k, folder in enumerate(sorted((root / "B").glob("id_*"))[:args.lmm_images]):
            (sub / folder.name).mkdir(parents=True)
            for img in folder.glob("*.png"):
                (sub / folder.name / img.name).symlink_to(img)
        from feval_core.testing.tiny import make_tiny_checkpoint

        lmm_ratio(LandmarkPrefilter.from_pretrained(root / "pf"), sub, make_tiny_checkpoint(root / "ckpt"),
                  root / "face_pack")


if __name__ == "__main__":
    main()
