"""The ``feval`` command: score, make-tiny, train, eval, bench."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("feval")

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2

# Sub-commands that live in their own modules register here: name -> (module, help).
_EXTERNAL: dict[str, tuple[str, str]] = {
    "train": ("feval_core.train_cli", "fine-tune projector, LoRA experts, router and heads on opinion scores"),
    "eval": ("feval_core.eval_cli", "SRCC / KRCC / PLCC per task and dimension, like the paper's tables"),
    "bench": ("feval_core.bench_cli", "F-Bench: leaderboard of generators per dimension, with a radar chart"),
}


def _add_score(sub: Any) -> None:
    p = sub.add_parser("score", help="score images (files or folders) and write JSON Lines")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--model", required=True, help="feval checkpoint folder or hub id, or a plain VLM (zero-shot)")
    p.add_argument("--prompt", help="generation prompt (enables correspondence)")
    p.add_argument("--ref", help="reference face image (enables identity)")
    p.add_argument("--dims", help="comma-separated dimensions (default: all that apply)")
    p.add_argument("--out", help="JSON Lines output; appended as results arrive, re-running resumes")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--recursive", action="store_true", help="look for images in sub-folders too")
    p.add_argument("--face-root", help="insightface root folder holding models/<pack>")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the backbone's own code (off by default)")
    p.set_defaults(func=cmd_score)


def _add_make_tiny(sub: Any) -> None:
    p = sub.add_parser("make-tiny", help="write a tiny random-weight checkpoint (offline; scores are meaningless)")
    p.add_argument("out", help="folder to write")
    p.add_argument("--family", default="qwen2_5_vl", choices=["qwen2_5_vl", "internvl", "llava"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_tiny)


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from .tiny import TINY_NOTICE, make_tiny_checkpoint

    out = make_tiny_checkpoint(args.out, family=args.family, seed=args.seed)
    print(f"wrote {out}\nNOTE: {TINY_NOTICE}", file=sys.stderr)
    return EXIT_OK


def cmd_score(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from .images import expand_inputs
    from .results import ResultsWriter
    from .scorer import FEvalScorer

    items = expand_inputs(args.inputs, recursive=args.recursive)
    seen: set[str] = set()
    unique = []
    for it in items:
        if it.name in seen:
            logger.warning("%s given more than once; scoring it once", it.name)
            continue
        seen.add(it.name)
        unique.append(it)
    if not unique:
        logger.error("no images found in %s (looked for common image extensions)", " ".join(args.inputs))
        return EXIT_USAGE
    writer = ResultsWriter(args.out) if args.out else None
    todo = [it for it in unique if writer is None or it.name not in writer.done]
    if writer is not None and len(todo) < len(unique):
        logger.info("resuming: %d of %d images already in %s", len(unique) - len(todo), len(unique), args.out)
    failed = 0
    if todo:
        dtype = getattr(torch, args.dtype) if args.dtype else None
        scorer = FEvalScorer.from_pretrained(args.model, device=args.device, dtype=dtype, face_root=args.face_root,
                                             trust_remote_code=args.trust_remote_code)
        with tqdm(total=len(todo), unit="img", desc="scoring", disable=None) as bar:
            for part in scorer.iter_scores(None, args.prompt, args.ref, args.dims, batch_size=args.batch_size,
                                           items=todo):
                records = part.to_records()
                if writer is not None:
                    writer.write(records)
                else:
                    failed += sum(1 for r in records if r["error"] is not None)
                    for r in records:
                        sys.stdout.write(json.dumps(r, ensure_ascii=False) + "\n")
                    sys.stdout.flush()
                bar.update(len(records))
    if writer is not None:
        writer.close()
        from .results import read_results

        rows = {r["image"]: r for r in read_results(args.out)}
        failed = sum(1 for it in unique if rows.get(it.name, {}).get("error") is not None)
    if failed:
        logger.error("%d of %d inputs could not be scored (see their 'error' fields)", failed, len(unique))
    return EXIT_SOME_FAILED if failed else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feval", description="F-Eval: score AI-generated faces on quality, "
                                     "authenticity, identity and correspondence (0-100, higher is better).")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_score(sub)
    _add_make_tiny(sub)
    for name, (module, help_text) in _EXTERNAL.items():
        try:
            import importlib

            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.add_parser(sub, name, help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notes are not for users
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("feval", "feval_core", "reward"):
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except Exception as exc:  # a clean message for known user errors; tracebacks with -v
        from .errors import FEvalError

        if isinstance(exc, FEvalError) and not args.verbose:
            logger.error("%s", exc)
            return EXIT_USAGE
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
