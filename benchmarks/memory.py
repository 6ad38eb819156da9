#!/usr/bin/env python
"""Flat memory: peak RSS of ``feval score FOLDER --out ...`` on N and on 10 x N images (tiny model, CPU).

Each run is a fresh process (its own peak RSS); the same settings score both folders through the streaming
path (prefetch window, rows appended to the output file as they arrive). Scoring ten times more images
must grow the peak by less than 10%.

    python benchmarks/memory.py --images 30 --factor 10 --size 512
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

logger = logging.getLogger("feval.bench")


def child(args: argparse.Namespace) -> int:
    """Score one folder in this process and print its peak RSS as JSON."""
    from feval_core.cli import main

    t0 = time.perf_counter()
    code = main(["score", args.child, "--model", args.model, "--out", args.out, "--batch-size", str(args.batch_size),
                 "--device", "cpu", "--prompt", "a portrait", "--ref", args.ref])
    with open(args.out, encoding="utf-8") as f:
        rows = sum(1 for _ in f)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    print(json.dumps({"exit": code, "rows": rows, "peak_rss_mib": peak_kib / 1024,
                      "seconds": time.perf_counter() - t0}))
    return 0


def write_images(folder: Path, count: int, size: int) -> None:
    import numpy as np
    from PIL import Image

    from feval_core.testing.facepack import draw_tiny_face

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        img = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
        side = size // 2
        img = draw_tiny_face(img, (size // 4, size // 4, size // 4 + side, size // 4 + side), seed=i % 5)
        Image.fromarray(img).save(folder / f"{i:06d}.png")


def run(folder: Path, model: Path, ref: Path, out: Path, batch_size: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(folder), "--model", str(model), "--ref", str(ref),
           "--out", str(out), "--batch-size", str(batch_size)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"scoring {folder} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=30, help="N: images in the small run")
    p.add_argument("--factor", type=int, default=10, help="the large run scores factor x N images")
    p.add_argument("--size", type=int, default=512, help="image side in pixels")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", help="write the result here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--ref", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from feval_core.testing.tiny import make_tiny_checkpoint

    work = Path(tempfile.mkdtemp(prefix="feval-mem-"))
    try:
        model = make_tiny_checkpoint(work / "tiny")
        big = work / "big"
        write_images(big, args.images * args.factor, args.size)
        small = work / "small"
        small.mkdir()
        for f in sorted(big.iterdir())[: args.images]:
            shutil.copy(f, small / f.name)
        ref = min(big.iterdir())
        results = {}
        for name, folder in (("N", small), (f"{args.factor}N", big)):
            results[name] = run(folder, model, ref, work / f"{name}.jsonl", args.batch_size)
            logger.info("%s: %s", name, results[name])
        n, large = results["N"], results[f"{args.factor}N"]
        growth = large["peak_rss_mib"] / n["peak_rss_mib"] - 1
        print(f"| images | peak RSS (MiB) | rows | seconds |\n|---:|---:|---:|---:|\n"
              f"| {n['rows']} | {n['peak_rss_mib']:.0f} | {n['rows']} | {n['seconds']:.1f} |\n"
              f"| {large['rows']} | {large['peak_rss_mib']:.0f} | {large['rows']} | {large['seconds']:.1f} |\n\n"
              f"peak RSS growth for {args.factor}x the images ({args.size} px, batch {args.batch_size}): "
              f"{100 * growth:+.1f}% ({'OK' if growth < 0.10 else 'NOT flat'}: limit +10%)")
        if args.json:
            Path(args.json).write_text(json.dumps({"runs": results, "growth": growth, "size": args.size,
                                                   "batch_size": args.batch_size}, indent=2))
        return 0 if growth < 0.10 else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
