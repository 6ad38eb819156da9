#!/usr/bin/env python
"""Which training schedule learns best: held-out SRCC per dimension after the same number of steps.

Trains the tiny F-Eval once per schedule, from the same data, backbone, seed and step budget, and prints one
row per schedule (and per seed): SRCC per dimension, their mean and the training time. Two tasks: ``lowlevel``
(:mod:`feval_core.testing.lowlevel`: quality and authenticity as low-level cues, default settings otherwise)
and ``synthetic`` (:mod:`feval_core.testing.synthetic`: all four dimensions, its own recipe). The schedule with
the best and steadiest mean SRCC is the one to make the default.

    python benchmarks/schedules.py --task lowlevel --seeds 0,1,2     # joint, two_stage, levels, regression
    python benchmarks/schedules.py --task synthetic --seeds 0,1
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
    ap.add_argument("--task", choices=["lowlevel", "synthetic"], default="lowlevel")
    ap.add_argument("--schedules", default="joint,two_stage,levels,regression")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds (data stays the same)")
    ap.add_argument("--train", type=int, help="training images (default: 3000 lowlevel, 1000 synthetic)")
    ap.add_argument("--val", type=int, default=200, help="held-out images")
    ap.add_argument("--epochs", type=int, help="default: the task's (3 lowlevel, 5 synthetic)")
    ap.add_argument("--work", help="folder for data and runs (default: a temporary folder)")
    ap.add_argument("--json", help="also write the rows as JSON Lines here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("feval_core", "httpx", "transformers", "accelerate"):
        logging.getLogger(name).setLevel(logging.WARNING)

    import torch

    from feval_core.dimensions import DIMENSIONS
    from feval_core.testing.lowlevel import lowlevel_train_config, prepare_lowlevel_task
    from feval_core.testing.synthetic import prepare_synthetic_task, synthetic_train_config
    from feval_core.train.loop import train

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    prepare, config = ((prepare_lowlevel_task, lowlevel_train_config) if args.task == "lowlevel"
                       else (prepare_synthetic_task, synthetic_train_config))
    n_train = args.train or (3000 if args.task == "lowlevel" else 1000)
    epochs = {"epochs": args.epochs} if args.epochs else ({} if args.task == "lowlevel" else {"epochs": 5})
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        task = prepare(work / "task", n_train=n_train, n_val=args.val)
        rows = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            for schedule in args.schedules.split(","):
                out = work / f"run_{schedule}_{seed}"
                res = train(config(task, out, schedule=schedule, seed=seed, **epochs))
                before = next(h["val"] for h in res.history if h.get("step") == 0 and "val" in h)
                row = {"schedule": schedule, "seed": seed, "steps": res.steps, "seconds": round(res.seconds, 1),
                       **{d: round(res.val[d]["srcc"], 4) for d in DIMENSIONS if d in res.val},
                       "mean": round(sum(res.val[d]["srcc"] for d in res.val) / len(res.val), 4),
                       "untrained_mean": round(sum(abs(before[d]["srcc"]) for d in before) / len(before), 4)}
                rows.append(row)
                logger.info("%s", json.dumps(row))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} threads)"
    cols = ["schedule", "seed", "steps", "seconds", *DIMENSIONS, "mean", "untrained_mean"]
    print(f"{args.task} task: {n_train} train / {args.val} held-out images, {device}")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    if args.json:
        Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
