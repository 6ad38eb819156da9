#!/usr/bin/env python
"""Which training schedule learns best: held-out SRCC per dimension after the same number of steps.

Trains the tiny F-Eval on the synthetic task of :mod:`feval_core.testing.synthetic` (each MOS a known function of
visible content) once per schedule, from the same data, backbone, seed and step budget, and prints one row
per schedule (and per seed): SRCC per dimension, their mean and the training time. The schedule with the
best mean SRCC is the one to make the default.

    python benchmarks/schedules.py                                  # joint, two_stage, levels, regression
    python benchmarks/schedules.py --schedules joint,two_stage --seeds 0,1 --epochs 5
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--schedules", default="joint,two_stage,levels,regression")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds (data stays the same)")
    ap.add_argument("--train", type=int, default=1000, help="synthetic training images")
    ap.add_argument("--val", type=int, default=200, help="synthetic held-out images")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--work", help="folder for data and runs (default: a temporary folder)")
    ap.add_argument("--json", help="also write the rows as JSON Lines here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("feval_core", "httpx", "transformers", "accelerate"):
        logging.getLogger(name).setLevel(logging.WARNING)

    import torch

    from feval_core.dimensions import DIMENSIONS
    from feval_core.testing.synthetic import (
        prepare_synthetic_task,
        synthetic_train_config,
    )
    from feval_core.train.loop import train

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        task = prepare_synthetic_task(work / "task", n_train=args.train, n_val=args.val)
        rows = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            for schedule in args.schedules.split(","):
                out = work / f"run_{schedule}_{seed}"
                res = train(synthetic_train_config(task, out, schedule=schedule, seed=seed, epochs=args.epochs))
                before = next(h["val"] for h in res.history if h.get("step") == 0 and "val" in h)
                row = {"schedule": schedule, "seed": seed, "steps": res.steps, "seconds": round(res.seconds, 1),
                       **{d: round(res.val[d]["srcc"], 4) for d in DIMENSIONS if d in res.val},
                       "mean": round(sum(res.val[d]["srcc"] for d in res.val) / len(res.val), 4),
                       "untrained_mean": round(sum(abs(before[d]["srcc"]) for d in before) / len(before), 4)}
                rows.append(row)
                logger.info("%s", json.dumps(row))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} threads)"
    cols = ["schedule", "seed", "steps", "seconds", *DIMENSIONS, "mean", "untrained_mean"]
    print(f"synthetic task: {args.train} train / {args.val} held-out images, {args.epochs} epochs, {device}")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    if args.json:
        Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
