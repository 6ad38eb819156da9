#!/usr/bin/env python
"""Reward server vs in-process scoring, side by side in one run: throughput and p50/p99 latency as ratios.

The same load drives both paths: ``--clients`` threads at once, ``--requests`` reward calls of
``--images-per-request`` images each (distinct synthetic faces, one reference, a prompt each). In-process, every
thread calls ``feval_reward`` on one shared scorer (what a trainer does with reward threads); remote, every thread
calls ``remote_reward`` on a ``feval serve`` started here on the same device (LitServe, dynamic batching across the
clients' requests). Both give the same rewards (checked: the largest difference is printed).

    python benchmarks/serve.py                                  # tiny model, CPU (a smoke test, not a measurement)
    python benchmarks/serve.py --model runs/feval-qwen7b --device cuda --clients 64 --requests 256 --size 512

Absolute times mean something only on a GPU; ratios from the same run are the point.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

logger = logging.getLogger("feval.bench")
WEIGHTS = {"quality": 1.0, "authenticity": 1.0, "identity": 1.0, "correspondence": 1.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint folder (default: a tiny random-weight one built here)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--requests", type=int, default=64, help="reward calls in all, shared by the clients")
    p.add_argument("--images-per-request", type=int, default=1)
    p.add_argument("--size", type=int, default=96, help="image side in pixels")
    p.add_argument("--max-batch-size", type=int, default=16, help="the server's requests per batch")
    p.add_argument("--batch-size", type=int, default=16, help="images per model call (both paths)")
    p.add_argument("--json", help="also write the figures here")
    return p.parse_args(argv)


def make_jobs(args: argparse.Namespace) -> tuple[list, object]:
    import numpy as np

    from feval_core.testing.facepack import draw_tiny_face

    def image(k: int) -> np.ndarray:
        img = np.full((args.size, args.size, 3), 20 + k % 50, np.uint8)
        s = args.size
        return draw_tiny_face(img, (s // 8 + k % 7, s // 8 + k % 5, 3 * s // 4, 3 * s // 4), seed=k % 5)

    jobs = [([image(r * args.images_per_request + i) for i in range(args.images_per_request)], f"a portrait {r % 9}")
            for r in range(args.requests)]
    return jobs, image(10_000)


def measure(name: str, call, jobs: list, clients: int) -> dict:
    from feval_core.testing.server import run_clients

    run_clients(call, jobs[: max(1, clients // 4)], min(clients, 4))  # warm-up (loads, first batches)
    load = run_clients(call, jobs, clients)
    if load.errors:
        raise RuntimeError(f"{name}: {len(load.errors)} calls failed, first: {load.errors[0]!r}")
    images = sum(len(j[0]) for j in jobs)
    return {"path": name, "images": images, "wall_s": load.wall, "img_per_s": images / load.wall,
            "p50_ms": 1000 * load.percentile(50), "p99_ms": 1000 * load.percentile(99), "rewards": load.results}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    from feval_core import FEvalScorer
    from feval_core.testing.server import start_server
    from reward import feval_reward, remote_reward

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from feval_core.testing.tiny import make_tiny_checkpoint

            model = str(make_tiny_checkpoint(Path(tmp) / "tiny", family="qwen2_5_vl", seed=0))
        jobs, ref = make_jobs(args)
        scorer = FEvalScorer.from_pretrained(model, device=args.device)
        local = measure("in-process", lambda j: feval_reward(j[0], j[1], ref, WEIGHTS, scorer,
                                                             batch_size=args.batch_size), jobs, args.clients)
        server = start_server(model, "--device", args.device, "--max-batch-size", str(args.max_batch_size),
                              "--batch-size", str(args.batch_size), "--max-queue", str(4 * args.clients),
                              "--batch-timeout", "0.01")
        try:
            server.wait_ready()
            rr = remote_reward(server.url, WEIGHTS, concurrency=1, max_images=args.images_per_request)
            remote = measure("server", lambda j: rr(j[0], j[1], ref), jobs, args.clients)
        finally:
            server.stop()
    diff = max(float((a - b).abs().max()) for a, b in zip(local.pop("rewards"), remote.pop("rewards")))
    print(f"\n{args.clients} clients, {args.requests} calls of {args.images_per_request} image(s) "
          f"({args.size} px), device {args.device}, model {'tiny (random weights)' if args.model is None else model}")
    print("| path | images | wall s | img/s | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in (local, remote):
        print(f"| {r['path']} | {r['images']} | {r['wall_s']:.2f} | {r['img_per_s']:.1f} | {r['p50_ms']:.0f} | "
              f"{r['p99_ms']:.0f} |")
    ratios = {"throughput": remote["img_per_s"] / local["img_per_s"], "p50": remote["p50_ms"] / local["p50_ms"],
              "p99": remote["p99_ms"] / local["p99_ms"]}
    print(f"server / in-process: throughput x{ratios['throughput']:.2f}, p50 latency x{ratios['p50']:.2f}, "
          f"p99 latency x{ratios['p99']:.2f}; largest reward difference {diff:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"in_process": local, "server": remote, "ratios": ratios,
                                               "max_reward_diff": diff, "torch": torch.__version__}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
