"""``feval eval``: score a manifest with a model and print the paper-shaped correlation table.

Writes ``eval_table.csv``, ``eval_table.md``, ``predictions.jsonl`` and ``scatter_<dimension>.png`` to
``--out``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .checks import check_dims, check_file, check_out_folder, check_scoring_options


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--model", required=True, help="feval checkpoint folder or hub id (or a plain VLM: zero-shot)")
    p.add_argument("--manifest", required=True, help="manifest with MOS (JSON Lines), e.g. a test split")
    p.add_argument("--out", default="feval_eval", help="folder for the table (CSV, Markdown), predictions, plots")
    p.add_argument("--dims", help="comma-separated dimensions (default: every dimension with a MOS)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                   help="default: bf16 on GPUs that support it, else fp32")
    p.add_argument("--face-root", help="insightface root folder holding models/<pack>")
    p.add_argument("--no-plots", action="store_true", help="skip the scatter plots")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the backbone's own code (off by default)")
    p.set_defaults(func=cmd_eval)
    return p


def cmd_eval(args: argparse.Namespace) -> int:
    check_file("--manifest", args.manifest)
    check_out_folder("--out", args.out)
    check_scoring_options(args)
    import torch

    from ..data.manifest import read_manifest
    from ..evaluate.report import evaluate
    from ..scoring.scorer import FEvalScorer

    rows = read_manifest(args.manifest)
    dims = check_dims(args.dims)
    scorer = FEvalScorer.from_pretrained(args.model, device=args.device,
                                         dtype=getattr(torch, args.dtype) if args.dtype else None,
                                         face_root=args.face_root, trust_remote_code=args.trust_remote_code)
    report = evaluate(scorer, rows, dims=dims, batch_size=args.batch_size)
    paths = report.save(args.out, plots=not args.no_plots)
    print(report.format("text"))
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0
