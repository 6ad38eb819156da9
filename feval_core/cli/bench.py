"""``feval bench``: F-Bench over your generators (one folder of images each), leaderboard and radar chart.

Writes ``scores.jsonl`` (per image; re-running resumes), ``leaderboard.csv``, ``leaderboard.md`` and
``radar.png`` to ``--out``. See :mod:`feval_core.evaluate.bench` for where prompts and references come from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .checks import (
    check_dims,
    check_file,
    check_folder,
    check_out_folder,
    check_scoring_options,
)


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("root", help="folder with one sub-folder of images per generator")
    p.add_argument("--model", required=True, help="feval checkpoint folder or hub id (or a plain VLM: zero-shot)")
    p.add_argument("--out", default="feval_bench", help="folder for scores, leaderboard and radar chart")
    p.add_argument("--generators", help="comma-separated generator folders (default: all)")
    p.add_argument("--ref", help="reference face for every image that has none of its own (enables identity)")
    p.add_argument("--dims", help="comma-separated dimensions (default: all that apply)")
    p.add_argument("--ci", choices=["t", "bootstrap"], default="t", help="95%% confidence interval of each mean")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                   help="default: bf16 on GPUs that support it, else fp32")
    p.add_argument("--face-root", help="insightface root folder holding models/<pack>")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the backbone's own code (off by default)")
    p.set_defaults(func=cmd_bench)
    return p


def cmd_bench(args: argparse.Namespace) -> int:
    check_folder("root", args.root, "one folder of images per generator")
    check_file("--ref", args.ref)
    check_out_folder("--out", args.out)
    check_scoring_options(args)
    from ..evaluate.bench import (
        SCORES_NAME,
        collect_bench,
        format_board,
        leaderboard,
        save_bench,
        score_bench,
    )
    from ..inputs.results import ResultsWriter

    gens = [g.strip() for g in args.generators.split(",") if g.strip()] if args.generators else None
    images = collect_bench(args.root, generators=gens, ref=args.ref)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with ResultsWriter(out / SCORES_NAME) as writer:
        done = {r["image"]: r for r in writer.rows if "generator" in r}
        todo = [b for b in images if str(b.path) not in done]
        scorer = None
        if todo:
            scorer = _load_scorer(args)
        records = score_bench(scorer, images, dims=check_dims(args.dims),
                              batch_size=args.batch_size, done=done, writer=writer)
    failed = [r for r in records if r.get("error")]
    board = leaderboard(records, method=args.ci)
    paths = save_bench(board, out)
    print(format_board(board, "text"))
    print(f"\nwrote {out / SCORES_NAME}, {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} images could not be scored (see their 'error' in {out / SCORES_NAME})", file=sys.stderr)
    return 1 if failed else 0


def _load_scorer(args: argparse.Namespace) -> Any:
    import torch

    from ..scoring.scorer import FEvalScorer

    return FEvalScorer.from_pretrained(args.model, device=args.device,
                                       dtype=getattr(torch, args.dtype) if args.dtype else None,
                                       face_root=args.face_root, trust_remote_code=args.trust_remote_code)
