"""``feval score``: score image files and folders, one JSON Lines row per image (stdout or ``--out``).

``--out`` is appended to as rows arrive; re-running the same command resumes. Under ``accelerate launch``
each process scores its share into a part file and the main process merges them into ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

from .checks import (
    UsageError,
    check_device,
    check_fiqa_model,
    check_folder,
    check_file,
    check_image_folders,
    check_min,
    check_out_file,
    check_questions,
    check_scoring_options,
)
from .main import EXIT_OK, EXIT_SOME_FAILED

logger = logging.getLogger("feval")


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text)
    p.add_argument("inputs", nargs="+", help="image files or folders (video files or frame folders with a video "
                   "checkpoint)")
    p.add_argument("--model", help="feval checkpoint folder or hub id, or a plain VLM (zero-shot); optional with "
                   "--fiqa")
    p.add_argument("--fiqa", metavar="MODEL", help="ViT-FIQA folder: adds 'utility' (0-100, how useful the main face "
                   "is to a face recognizer) to each row")
    p.add_argument("--prompt", help="generation prompt (enables correspondence)")
    p.add_argument("--ref", help="reference face image (enables identity)")
    p.add_argument("--lq", help="the low-quality input the images restore (restoration pairs: quality is judged "
                   "against it)")
    p.add_argument("--question", action="append", metavar="TEXT",
                   help="a question in your own words, e.g. \"How natural does this face look?\" (repeatable): the "
                   "router picks the expert; rows get 'answers' with the dimension, its probability and the score. "
                   "Needs a trained checkpoint; with --question, --dims defaults to none")
    p.add_argument("--dims", help="comma-separated dimensions (default: all that apply)")
    p.add_argument("--out", help="JSON Lines output; appended as results arrive, re-running resumes")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                   help="default: bf16 on GPUs that support it, else fp32")
    p.add_argument("--recursive", action="store_true", help="look for images in sub-folders too")
    p.add_argument("--face-root", help="insightface root folder holding models/<pack>")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the backbone's own code (off by default)")
    p.add_argument("--workers", type=int, help="threads that decode images and detect faces ahead of the model "
                   "(default: up to 4; 0: none)")
    p.add_argument("--fps", type=float, help="frame rate of frame folders (video checkpoints; default 25)")
    p.add_argument("--prefilter", type=float, metavar="T", help="skip the LMM for faces whose landmark pre-filter "
                   "score is under T (their rows say so); needs --prefilter-model")
    p.add_argument("--prefilter-model", metavar="DIR", help="landmark pre-filter folder (`feval fiqa prefilter "
                   "train`); adds 'prefilter' to each row")
    p.set_defaults(func=cmd_score)
    return p


def check_score_args(args: argparse.Namespace) -> None:
    """Every argument of ``feval score`` that can be checked without loading the model."""
    from ..scoring.distributed import launched_processes

    if args.model is None and args.fiqa is None:
        raise UsageError("give --model (F-Eval scores), --fiqa (utility), or both")
    if args.model is not None:
        check_scoring_options(args)
    else:
        check_fiqa_only(args)
    check_fiqa_model("--fiqa", args.fiqa)
    check_min("--workers", args.workers, 0)
    check_file("--ref", args.ref)
    check_file("--lq", args.lq)
    check_questions(args.question, args.model)
    check_out_file("--out", args.out)
    if launched_processes() > 1 and not args.out:
        raise UsageError("under accelerate launch, feval score needs --out: the processes write their rows to "
                         "part files that are merged into it")
    check_image_folders(args.inputs, args.recursive)
    if getattr(args, "fps", None) is not None:
        raise UsageError("--fps is the frame rate of video frame folders: it needs a video checkpoint as --model")
    if args.prefilter is not None and args.prefilter_model is None:
        raise UsageError("--prefilter T needs --prefilter-model DIR (a folder from `feval fiqa prefilter train`)")
    check_folder("--prefilter-model", args.prefilter_model, "prefilter_config.json and forest.onnx")


def check_fiqa_only(args: argparse.Namespace) -> None:
    """``--fiqa`` without ``--model``: the F-Eval-only options make no sense."""
    given = [flag for flag, v in (("--prompt", args.prompt), ("--ref", args.ref), ("--lq", args.lq),
                                  ("--question", args.question), ("--dims", args.dims)) if v]
    if given:
        raise UsageError(f"{', '.join(given)} need an F-Eval model: add --model, or drop them to score utility only")
    check_min("--batch-size", args.batch_size)
    check_folder("--face-root", args.face_root, "models/<pack>")
    check_device(args.device)


def cmd_score(args: argparse.Namespace) -> int:
    from .video import is_video_model, score_videos_cli

    if is_video_model(args.model):  # a video checkpoint: one row per video (video_quality)
        return score_videos_cli(args)
    check_score_args(args)
    from ..inputs.images import expand_inputs
    from ..inputs.results import ResultsWriter, json_line

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
        raise UsageError(f"no images found in {' '.join(args.inputs)} (looked for common image extensions)")
    from ..scoring.distributed import launched_processes

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
    """Load the scorer(s) and stream the rows of ``todo`` to ``emit``, one chunk at a time.

    Faces are detected once: F-Eval's detections go to ViT-FIQA and the pre-filter, which reuse them when their face
    pack is F-Eval's. ``--prefilter T`` skips the LMM (ViT-FIQA without ``--model``) for faces under T.
    """
    from tqdm.auto import tqdm

    prefilter = _load_prefilter(args)
    fiqa = None
    if args.fiqa is not None:
        from ..fiqa.scorer import FIQAScorer

        fiqa = FIQAScorer.from_pretrained(args.fiqa, device=device, face_root=args.face_root)
    if args.model is None:
        with tqdm(total=len(todo), unit="img", desc="utility", disable=None) as bar:
            for part in fiqa.iter_scores(None, batch_size=args.batch_size, items=todo, prefilter=prefilter,
                                         prefilter_threshold=args.prefilter):
                emit(part.to_records())
                bar.update(len(part))
        return
    import torch

    from ..scoring.scorer import FEvalScorer

    dtype = getattr(torch, args.dtype) if args.dtype else None
    scorer = FEvalScorer.from_pretrained(args.model, device=device, dtype=dtype, face_root=args.face_root,
                                         trust_remote_code=args.trust_remote_code)
    scorer.workers = getattr(args, "workers", None)
    done = 0
    with tqdm(total=len(todo), unit="img", desc="scoring", disable=None) as bar:
        for part in scorer.iter_scores(None, args.prompt, args.ref, args.dims, batch_size=args.batch_size,
                                       items=todo, questions=args.question, lq=args.lq, prefilter=prefilter,
                                       prefilter_threshold=args.prefilter, keep_faces=fiqa is not None):
            records = part.to_records()
            if fiqa is not None:
                from ..fiqa.scorer import FIQAResult, merge_utility

                chunk = todo[done:done + len(records)]
                utility = FIQAResult.concat(list(fiqa.iter_scores(None, args.batch_size, items=chunk,
                                                                  faces=part.face_info)))
                records = merge_utility(records, utility)
            done += len(records)
            emit(records)
            bar.update(len(records))


def _load_prefilter(args: argparse.Namespace) -> Any:
    """The pre-filter of ``--prefilter-model``, or None."""
    if not args.prefilter_model:
        return None
    from ..fiqa.prefilter import LandmarkPrefilter

    return LandmarkPrefilter.from_pretrained(args.prefilter_model, face_root=args.face_root)


def _count_failed(out: str, unique: list[Any]) -> int:
    from ..inputs.results import read_results

    names = {it.name for it in unique}
    return sum(1 for r in read_results(out) if r["image"] in names and r.get("error") is not None)


def _score_sharded(args: argparse.Namespace, unique: list[Any]) -> int:
    """``accelerate launch ... feval score``: each process scores its share; the main process merges."""
    from ..scoring.distributed import ShardedRun

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
