#!/usr/bin/env python
"""Face detection + ArcFace in parallel: images/s with 1 and 2 prefetch workers, side by side in one run.

Uses an insightface pack with the real networks' compute (SCRFD-10G detector, iResNet-50 recognizer; random
weights, ``feval_core.testing.facepack_sized``) unless ``--face-root``/``--face-pack`` name a real pack such
as ``buffalo_l``. Each image holds one face, so each costs one detection at ``--det-size`` and one embedding.
Images are decoded first: the figure is the face work that ``FEvalScorer``'s workers do, through the same
``Prefetcher`` and ``FaceEncoder.analyze``.

    python benchmarks/detect_workers.py                  # CPU: sessions and threads as FaceEncoder sets them
    python benchmarks/detect_workers.py --images 32 --json detect.json

Configurations: one worker with one session using all cores; two workers sharing one session (the old global
lock: one call at a time); one worker with a 1-thread session; two workers with a 1-thread session each (what
``FaceEncoder`` does on 2 cores now: the cores divided among the sessions). "2 vs 1 workers" is the ratio of the
last two: the same sessions, one per core.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402

logger = logging.getLogger("feval.bench")


def face_images(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """RGB arrays with one tiny-pack face each, at varied places and sizes, on a dark textured background."""
    from feval_core.testing.facepack import draw_tiny_face

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        img = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
        side = int(size * rng.uniform(0.3, 0.45))
        x, y = (int(v) for v in rng.integers(int(0.2 * size), int(0.8 * size) - side, size=2))
        out.append(draw_tiny_face(img, (x, y, x + side, y + side), seed=i % 7))
    return out


def measure(encoder, images: list[np.ndarray], workers: int) -> tuple[float, float, int]:
    """Images/s of ``encoder.analyze`` over ``images`` with ``workers`` prefetch threads, the cores busy on
    average (process CPU time / wall time: 1.0 is one core, whatever other processes do), and faces found."""
    from feval_core.inputs.prefetch import Prefetcher, chunked

    for image in images[:workers or 1]:  # warm-up: sessions per resolution, anchors
        encoder.analyze(image)
    t0, c0 = time.perf_counter(), time.process_time()
    found = 0
    for chunk in Prefetcher(chunked(images, max(1, workers) * 2), lambda im, _: encoder.analyze(im), workers=workers):
        found += sum(info.num_faces for info in chunk)
    wall = time.perf_counter() - t0
    return len(images) / wall, (time.process_time() - c0) / wall, found


CONFIGS = (  # label, prefetch workers, sessions, threads per session (None: FaceEncoder's default)
    ("1 worker, 1 session x all cores", 1, 1, None),
    ("2 workers, 1 shared session (the old lock)", 2, 1, None),
    ("1 worker, 1 thread", 1, 1, 1),
    ("2 workers, 2 sessions x 1 thread (default)", 2, 2, 1),
)
ONE, TWO = CONFIGS[2][0], CONFIGS[3][0]  # the pair whose ratio is "2 vs 1 workers": same sessions, one per core
OLD = CONFIGS[1][0]


def run(images: list[np.ndarray], pack: str, root: Path, det_size: int, rounds: int) -> dict[str, dict]:
    """Each configuration ``rounds`` times, interleaved (a shared machine's load hits all alike); best of each."""
    from feval_core.faces.encoder import FaceEncoder

    encoders = {label: FaceEncoder(pack, root=root, det_size=(det_size, det_size), sessions=sessions, threads=threads)
                for label, _, sessions, threads in CONFIGS}
    results: dict[str, dict] = {}
    for r in range(rounds):
        for label, workers, _, _ in CONFIGS:
            enc = encoders[label]
            ips, cores, found = measure(enc, images, workers)
            best = results.setdefault(label, {"img_per_s": 0.0, "workers": workers, "sessions": enc.sessions,
                                              "threads": enc.threads, "faces": found, "runs": [], "cores_busy": 0.0})
            best["runs"].append(ips)
            if ips > best["img_per_s"]:
                best["img_per_s"], best["cores_busy"] = ips, cores
            logger.info("round %d, %s: %.2f img/s, %.2f cores busy (%d faces; load average %.1f)", r + 1, label, ips,
                        cores, found, os.getloadavg()[0])
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=16, help="images per measurement")
    p.add_argument("--size", type=int, default=640, help="image side in pixels")
    p.add_argument("--det-size", type=int, default=640, help="detector input size (buffalo_l's default: 640)")
    p.add_argument("--rounds", type=int, default=2, help="measurements per configuration (best is reported)")
    p.add_argument("--face-root", help="insightface root with models/<pack> (default: the sized pack, written now)")
    p.add_argument("--face-pack", default="sized_face")
    p.add_argument("--scale", type=float, default=1.0, help="width scale of the written pack (1: real size)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.face_root:
        root = Path(args.face_root)
    else:
        from feval_core.testing.facepack_sized import write_sized_face_pack

        root = Path(tempfile.mkdtemp(prefix="feval-faces-"))
        write_sized_face_pack(root, args.face_pack, scale=args.scale)
    images = face_images(args.images, args.size)
    load = os.getloadavg()[0]
    results = run(images, args.face_pack, root, args.det_size, args.rounds)
    base = results[CONFIGS[0][0]]["img_per_s"]
    print(f"Face detection + ArcFace, pack {args.face_pack} (scale {args.scale}), {args.images} images of "
          f"{args.size} px, det size {args.det_size}, {os.cpu_count()} CPU cores, load average before the run "
          f"{load:.1f}, after {os.getloadavg()[0]:.1f}")
    print("| configuration | workers | sessions | threads/session | img/s | cores busy | vs first row |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, r in results.items():
        print(f"| {label} | {r['workers']} | {r['sessions']} | {r['threads']} | {r['img_per_s']:.2f} | "
              f"{r['cores_busy']:.2f} | {r['img_per_s'] / base:.2f}x |")
    ratio = results[TWO]["img_per_s"] / results[ONE]["img_per_s"]
    vs_old = results[TWO]["img_per_s"] / results[OLD]["img_per_s"]
    print(f"2 vs 1 detection workers (one 1-thread session each): {ratio:.2f}x; 2 workers now vs 2 workers under the "
          f"old lock: {vs_old:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "ratio_2_vs_1": ratio, "ratio_vs_old_lock": vs_old,
                                               "cpu_cores": os.cpu_count(), "args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
