"""``feval eval``: score a manifest with a model and print the paper-shaped correlation table.

Writes ``eval_table.csv``, ``eval_table.md``, ``predictions.jsonl`` and ``scatter_<dimension>.png`` to
``--out``. A video checkpoint (``video_config.json``) on a video manifest is evaluated as ``feval video eval``
does (the same code): ``predictions.jsonl`` (one row per video, resumable) and ``eval_table.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .checks import UsageError, check_dims, check_file, check_folder, check_out_folder, check_scoring_options


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
    p.add_argument("--split", choices=["train", "val", "test"], help="video manifests: only rows of this split")
    p.set_defaults(func=cmd_eval)
    return p


def cmd_eval(args: argparse.Namespace) -> int:
    check_file("--manifest", args.manifest)
    check_out_folder("--out", args.out)
    if _is_video(args):
        return _eval_video(args)
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


def _is_video(args: argparse.Namespace) -> bool:
    """True for a video checkpoint on a video manifest; either one with the other kind is refused."""
    from ..video.manifest import manifest_kind
    from .video import is_video_model

    video_manifest, video_model = manifest_kind(args.manifest) == "video", is_video_model(args.model)
    if video_manifest != video_model:
        raise UsageError(f"--model {args.model} is {'a video' if video_model else 'an image'} checkpoint but "
                         f"--manifest {args.manifest} is {'a video' if video_manifest else 'an image'} manifest; "
                         "evaluate a video checkpoint (with video_config.json) on a video manifest (rows with a "
                         "\"video\" key) and an image checkpoint on an image manifest")
    if not video_model and args.split:
        raise UsageError("--split only applies to video manifests; split an image manifest with `feval split`")
    return video_model


def _eval_video(args: argparse.Namespace) -> int:
    """``feval eval`` on a video checkpoint: ``feval video eval``'s code; rows and table in ``--out``."""
    import json
    from pathlib import Path

    import torch

    from .main import EXIT_OK, EXIT_SOME_FAILED
    from .video import evaluate_video

    other = [flag for flag, v in (("--dims", args.dims), ("--no-plots", args.no_plots),
                                  ("--trust-remote-code", args.trust_remote_code)) if v]
    if other:
        verb = "applies" if len(other) == 1 else "apply"
        raise UsageError(f"{', '.join(other)} {verb} only to image checkpoints; {args.model} is a video checkpoint "
                         "(it scores video_quality, with no plots and no remote code): drop them")
    check_folder("--face-root", args.face_root, "models/<pack>")
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    table = evaluate_video(args.model, args.manifest, split=args.split, rows_out=out / "predictions.jsonl",
                           device=args.device, batch_size=args.batch_size, face_root=args.face_root,
                           dtype=getattr(torch, args.dtype) if args.dtype else torch.float32)
    (out / "eval_table.json").write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(table))
    print(f"\nwrote {out / 'eval_table.json'}, {out / 'predictions.jsonl'}", file=sys.stderr)
    return EXIT_SOME_FAILED if table["failed"] else EXIT_OK
