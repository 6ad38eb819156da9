"""``feval import-faceq`` (FaceQ download -> manifest) and ``feval split`` (manifest -> train/val/test)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .checks import (
    UsageError,
    check_file,
    check_folder,
    check_out_file,
    check_out_folder,
    parse_fractions,
)


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text)
    if name == "import-faceq":
        from ..data.faceq import SCALES
        from ..data.manifest import TASKS

        p.add_argument("root", help="FaceQ download folder (holding images/ and MOSs/)")
        p.add_argument("--out", required=True, help="manifest to write (JSON Lines)")
        p.add_argument("--task-hint", choices=TASKS, help="task of images whose names do not say it")
        p.add_argument("--scale", choices=SCALES, help="score scale of every column (default: told from its range)")
        p.set_defaults(func=cmd_import_faceq)
    elif name == "split":
        p.add_argument("manifest", help="manifest to split")
        p.add_argument("--out", required=True, help="folder for train.jsonl, val.jsonl, test.jsonl")
        p.add_argument("--fractions", default="0.8,0.05,0.15", help="train,val,test fractions (sum 1)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--by", choices=["model", "image", "none"], default="image",
                       help="keep each generator model (or image) in one split")
        p.set_defaults(func=cmd_split)
    else:  # pragma: no cover - registration error
        raise ValueError(f"data_cli has no command {name!r}")
    return p


def cmd_import_faceq(args: argparse.Namespace) -> int:
    check_folder("root", args.root, "images/ and MOSs/ of a FaceQ download")
    check_out_file("--out", args.out, "faceq.jsonl")
    from ..data.faceq import import_faceq

    rows = import_faceq(args.root, args.out, task_hint=args.task_hint, scale=args.scale)
    print(f"wrote {len(rows)} rows to {args.out}", file=sys.stderr)
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    check_file("manifest", args.manifest)
    check_out_folder("--out", args.out)
    fractions = parse_fractions(args.fractions)
    from ..data.manifest import read_manifest
    from ..data.splits import write_splits
    from ..errors import FEvalError

    rows = read_manifest(args.manifest)
    try:
        paths = write_splits(rows, args.out, fractions=fractions, seed=args.seed,
                             by=None if args.by == "none" else args.by)
    except ValueError as exc:  # a split the groups cannot fill and the like
        if isinstance(exc, FEvalError):
            raise
        raise UsageError(f"feval split: {exc}") from exc
    for name, path in paths.items():
        print(f"{name}: {path}", file=sys.stderr)
    return 0
