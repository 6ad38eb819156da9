"""The ``feval`` command: score, make-tiny, train, eval, bench."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger("feval")

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2

# Sub-commands that live in their own modules register here: name -> (module, help).
_EXTERNAL: dict[str, tuple[str, str]] = {
    "train": ("feval_core.train_cli", "fine-tune projector, LoRA experts, router and heads on opinion scores"),
    "eval": ("feval_core.eval_cli", "SRCC / KRCC / PLCC per task and dimension, like the paper's tables"),
    "bench": ("feval_core.bench_cli", "F-Bench: leaderboard of generators per dimension, with a radar chart"),
    "import-faceq": ("feval_core.data_cli", "turn a FaceQ download (images/ + MOSs/) into a manifest"),
    "split": ("feval_core.data_cli", "split a manifest into train/val/test, reproducibly, optionally by model"),
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
    p.add_argument("--workers", type=int, help="threads that decode images and detect faces ahead of the model "
                   "(default: up to 4; 0: none)")
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
    from .images import expand_inputs
    from .results import ResultsWriter, json_line

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
    from .distributed import launched_processes

    if launched_processes() > 1:
        return _score_sharded(args, unique)
    writer = ResultsWriter(args.out) if args.out else None
    todo = [it for it in unique if writer is None or it.name not in writer.done]
    if writer is not None and len(todo) < len(unique):
        logger.info("resuming: %d of %d images already in %s", len(unique) - len(todo), len(unique), args.out)
    failed = 0
    if todo:
        def emit(records: list[dict[str, Any]]) -> None:
            nonlocal failed
            if writer is not None:
                writer.write(records)
            else:
                failed += sum(1 for r in records if r["error"] is not None)
                for r in records:
                    sys.stdout.write(json_line(r))
                sys.stdout.flush()

        _score_items(args, todo, emit, args.device)
    if writer is not None:
        writer.close()
        failed = _count_failed(args.out, unique)
    if failed:
        logger.error("%d of %d inputs could not be scored (see their 'error' fields)", failed, len(unique))
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _score_items(args: argparse.Namespace, todo: list[Any], emit: Callable[[list[dict[str, Any]]], None],
                 device: str | None) -> None:
    """Load the scorer and stream the rows of ``todo`` to ``emit``, one chunk at a time."""
    import torch
    from tqdm.auto import tqdm

    from .scorer import FEvalScorer

    dtype = getattr(torch, args.dtype) if args.dtype else None
    scorer = FEvalScorer.from_pretrained(args.model, device=device, dtype=dtype, face_root=args.face_root,
                                         trust_remote_code=args.trust_remote_code)
    scorer.workers = getattr(args, "workers", None)
    with tqdm(total=len(todo), unit="img", desc="scoring", disable=None) as bar:
        for part in scorer.iter_scores(None, args.prompt, args.ref, args.dims, batch_size=args.batch_size,
                                       items=todo):
            records = part.to_records()
            emit(records)
            bar.update(len(records))


def _count_failed(out: str, unique: list[Any]) -> int:
    from .results import read_results

    names = {it.name for it in unique}
    return sum(1 for r in read_results(out) if r["image"] in names and r.get("error") is not None)


def _score_sharded(args: argparse.Namespace, unique: list[Any]) -> int:
    """``accelerate launch ... feval score``: each process scores its share; the main process merges."""
    from .distributed import ShardedRun

    if not args.out:
        logger.error("under accelerate launch, feval score needs --out: the processes write their rows to part "
                     "files that are merged into it")
        return EXIT_USAGE
    run = ShardedRun(args.out, cpu=str(args.device or "").startswith("cpu"))
    mine = run.plan(unique, args.batch_size)
    if mine:
        with run.writer() as writer:
            _score_items(args, mine, writer.write, run.device(args.device))
    missing = run.finish([it.name for it in unique])
    if not run.is_main:
        return EXIT_OK
    failed = _count_failed(args.out, unique)
    if failed:
        logger.error("%d of %d inputs could not be scored (see their 'error' fields)", failed, len(unique))
    return EXIT_SOME_FAILED if failed or missing else EXIT_OK


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
