#!/usr/bin/env python
"""Faces detected once: ``feval score --fiqa`` and ``--prefilter-model`` with F-Eval's detections handed on, against
each scorer detecting for itself (the old path), side by side in one run.

Uses an insightface pack with the real networks' compute (SCRFD-10G detector, iResNet-50 ArcFace; random weights,
``feval_core.testing.facepack_sized``), the tiny F-Eval LMM and the tiny ViT-FIQA, all on the CPU. Every scorer gets
its own ``FaceEncoder`` of the same pack, as the CLI loads them; the figures are wall seconds of whole runs and the
detector calls each made. The tiny LMM is far cheaper than a real one, so the end-to-end ratio here overstates what
a GPU run with a real LMM saves; the ViT-FIQA and pre-filter steps' own times are the saving itself.

    python benchmarks/faces_once.py                    # 16 images of 640 px, det size 640
    python benchmarks/faces_once.py --images 32 --scale 0.5
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402

from benchmarks.detect_workers import face_images  # noqa: E402

logger = logging.getLogger("feval.bench")


def _setup(args: argparse.Namespace, tmp: Path) -> dict:
    from PIL import Image

    from feval_core import FEvalScorer
    from feval_core.faces.encoder import FaceEncoder
    from feval_core.fiqa.landmarks import detect_faces
    from feval_core.fiqa.prefilter import LandmarkPrefilter, PrefilterConfig, fit_forest
    from feval_core.fiqa.scorer import FIQAScorer
    from feval_core.model.config import FaceEncoderConfig
    from feval_core.testing.facepack_sized import SIZED_PACK_NAME, write_sized_face_pack
    from feval_core.testing.fiqa import make_tiny_fiqa
    from feval_core.testing.tiny import make_tiny_checkpoint

    root = tmp / "packs"
    write_sized_face_pack(root, scale=args.scale)
    det = (args.det_size, args.det_size)

    def encoder() -> FaceEncoder:
        return FaceEncoder(SIZED_PACK_NAME, root=root, det_size=det)

    arrays = face_images(args.images, args.size)
    paths = []
    for i, a in enumerate(arrays):
        paths.append(str(tmp / f"{i:03d}.png"))
        Image.fromarray(a).save(paths[-1])
    scorer = FEvalScorer.from_pretrained(make_tiny_checkpoint(tmp / "ckpt"), device="cpu")
    scorer.face_encoder = encoder()
    fiqa = FIQAScorer.from_pretrained(make_tiny_fiqa(tmp / "fiqa"), device="cpu")
    fiqa.face_encoder = encoder()
    found = detect_faces(scorer.face_encoder, face_images(24, args.size, seed=1))
    cfg = PrefilterConfig(n_estimators=50, max_depth=6, face=FaceEncoderConfig(pack=SIZED_PACK_NAME, root=str(root),
                                                                               det_size=args.det_size))
    labels = (found.bbox[found.found, 2] - found.bbox[found.found, 0]) / args.size * 100  # any label will do
    onnx_bytes = fit_forest(found.features(5), labels, cfg)
    pf = LandmarkPrefilter(cfg, onnx_bytes, face_encoder=encoder())
    return {"scorer": scorer, "fiqa": fiqa, "pf": pf, "paths": paths}


def _timed(fn, encoders) -> tuple[object, float, int]:
    before = sum(e.detections for e in encoders)
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, sum(e.detections for e in encoders) - before


def run(s: dict) -> list[tuple[str, float, int, float | None]]:
    """(path, seconds, detector calls, seconds of the FIQA / pre-filter step alone) for each path."""
    scorer, fiqa, pf, paths = s["scorer"], s["fiqa"], s["pf"], s["paths"]
    encs = [scorer.face_encoder, fiqa.face_encoder, pf.face_encoder]
    t = float(np.nanmedian(pf.score(paths[:8]).values))  # warm-up of every session, and a threshold
    scorer.score(paths[:2], dims="quality")
    fiqa.score(paths[:2])
    rows = []

    def fiqa_twice():
        res = scorer.score(paths, dims="quality")
        t0 = time.perf_counter()
        return res, fiqa.score(paths), time.perf_counter() - t0

    def fiqa_once():
        res = scorer.score(paths, dims="quality", keep_faces=True)
        t0 = time.perf_counter()
        return res, fiqa.score(paths, faces=res.face_info), time.perf_counter() - t0

    (_, twice, step2), sec2, det2 = _timed(fiqa_twice, encs)
    (_, once, step1), sec1, det1 = _timed(fiqa_once, encs)
    assert once.to_records() == twice.to_records(), "utility must not depend on who detected the faces"
    rows += [("--fiqa, each detects (old)", sec2, det2, step2), ("--fiqa, faces handed on", sec1, det1, step1)]

    def pf_twice():  # the old CLI: the pre-filter over every image first, then the LMM on the faces it kept
        t0 = time.perf_counter()
        pre = pf.score(paths)
        step = time.perf_counter() - t0
        keep = [p for p, v in zip(paths, pre.values) if not v < t]
        return pre, scorer.score(keep, dims="quality"), step

    (pre, _, pstep2), psec2, pdet2 = _timed(pf_twice, encs)
    res, psec1, pdet1 = _timed(lambda: scorer.score(paths, dims="quality", prefilter=pf, prefilter_threshold=t), encs)
    assert res.prefilter == [r["prefilter"] for r in pre.to_records()], "pre-filter scores must not change"
    rows += [(f"--prefilter {t:.1f}, each detects (old)", psec2, pdet2, pstep2),
             (f"--prefilter {t:.1f}, faces handed on", psec1, pdet1, None)]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--size", type=int, default=640, help="image side in pixels")
    p.add_argument("--det-size", type=int, default=640, help="detector input size (buffalo_l's default: 640)")
    p.add_argument("--scale", type=float, default=1.0, help="width scale of the sized pack (1: real networks)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="feval-once-") as tmp:
        rows = run(_setup(args, Path(tmp)))
    print(f"Faces detected once: {args.images} images of {args.size} px, sized pack (scale {args.scale}), det size "
          f"{args.det_size}, tiny F-Eval + tiny ViT-FIQA, CPU ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})")
    print("| path | detector calls | seconds | vs old | FIQA / pre-filter step alone (s) |")
    print("|---|---:|---:|---:|---:|")
    for k, (label, sec, det, step) in enumerate(rows):
        base = rows[k - k % 2][1]
        print(f"| {label} | {det} | {sec:.2f} | {sec / base:.3f} | {'-' if step is None else f'{step:.2f}'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
