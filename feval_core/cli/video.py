"""``feval video``: train and evaluate video checkpoints, import FVQ-20K; and ``feval score`` on videos (called by
:mod:`.score` when ``--model`` is a video checkpoint)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from typing import Any

from .checks import UsageError, check_device, check_file, check_min, check_out_file, check_out_folder
from .main import EXIT_OK, EXIT_SOME_FAILED

logger = logging.getLogger("feval")


def _flag(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text)
    vsub = p.add_subparsers(dest="video_command", required=True)
    t = vsub.add_parser("train", help="train a video checkpoint on a video manifest (schedules and learning-rate rule "
                                      "of `feval train`)")
    t.add_argument("--manifest", required=True, help='JSON Lines {"video": ..., "mos": 0-100, "split"?: ...}')
    t.add_argument("--out", required=True, help="checkpoint folder to write")
    from ..video.train import VideoTrainConfig

    for f in dataclasses.fields(VideoTrainConfig):
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
        conv = int if kind == "int" else float if kind.startswith("float") else _flag if kind == "bool" else str
        if "tuple" in kind:
            t.add_argument("--" + f.name.replace("_", "-"), help="comma-separated " + f.metadata.get("help", ""))
        else:
            t.add_argument("--" + f.name.replace("_", "-"), type=conv, required=f.name in ("base", "temporal_model"),
                           help=f.metadata.get("help"))
    t.set_defaults(func=cmd_train)
    e = vsub.add_parser("eval", help="SRCC / KRCC / PLCC of a video checkpoint on a video manifest")
    e.add_argument("--model", required=True)
    e.add_argument("--manifest", required=True)
    e.add_argument("--split", choices=["train", "val", "test"], help="only rows of this split")
    e.add_argument("--out", help="JSON Lines of per-video rows (resumable)")
    e.add_argument("--device")
    e.add_argument("--batch-size", type=int, default=4)
    e.set_defaults(func=cmd_eval)
    i = vsub.add_parser("import-fvq", help="FVQ-20K score file + videos -> manifest with its 80/5/15 split")
    i.add_argument("scores", help="the released score file (CSV, TXT or JSON with a name and a MOS column)")
    i.add_argument("--videos", required=True, help="folder holding the videos")
    i.add_argument("--out", required=True, help="manifest to write (.jsonl)")
    i.add_argument("--scale", type=float, help="multiply MOS by this (e.g. 20 for 0-5 ratings)")
    i.add_argument("--seed", type=int, default=0)
    i.set_defaults(func=cmd_import)
    return p


def _rows(manifest: str, split: str | None) -> list[tuple[Any, float]]:
    from ..video.manifest import read_video_manifest
    from ..video.sources import VideoSource

    rows = [r for r in read_video_manifest(manifest) if split is None or r.split == split]
    if not rows:
        raise UsageError(f"{manifest} has no rows{f' in split {split!r}' if split else ''}")
    return [(VideoSource("file", str(r.video), str(r.video)), r.mos) for r in rows]


def cmd_train(args: argparse.Namespace) -> int:
    from ..scoring.scorer import _load_face_encoder
    from ..video.train import VideoTrainConfig, train_video

    check_file("--manifest", args.manifest)
    check_out_folder("out", args.out)
    kw = {}
    for f in dataclasses.fields(VideoTrainConfig):
        v = getattr(args, f.name)
        if v is not None:
            kw[f.name] = tuple(x.strip() for x in v.split(",")) if "tuple" in str(f.type) else v
    cfg = VideoTrainConfig(**kw)
    from ..video.manifest import read_video_manifest

    rows = read_video_manifest(args.manifest)
    has_split = any(r.split for r in rows)
    train = _rows(args.manifest, "train" if has_split else None)
    val = _rows(args.manifest, "val") if any(r.split == "val" for r in rows) else []
    face = _load_face_encoder(cfg.feval_config(), None, cfg.device, cfg.face_root) if "face" in cfg.branches else None
    res = train_video(cfg, train, val, out=args.out, face_encoder=face)
    print(json.dumps({"out": args.out, "val": res.val, "skipped": len(res.skipped), "seconds": round(res.seconds, 1)}))
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    import numpy as np

    from ..evaluate.metrics import correlation_table
    from ..video.scorer import VideoScorer

    check_file("--manifest", args.manifest)
    check_min("--batch-size", args.batch_size)
    check_device(args.device)
    pairs = _rows(args.manifest, args.split)
    scorer = VideoScorer.from_pretrained(args.model, device=args.device or "cpu")
    sources = [s for s, _ in pairs]
    rows = (scorer.score_to_file(sources, args.out, batch_size=args.batch_size) if args.out
            else scorer.score(sources, batch_size=args.batch_size))
    by_name = {r["image"]: r.get("video_quality") for r in rows}
    pred = np.asarray([by_name.get(s.name) if by_name.get(s.name) is not None else np.nan for s, _ in pairs], float)
    ok = np.isfinite(pred)
    table = correlation_table(pred[ok], np.asarray([m for _, m in pairs])[ok])
    print(json.dumps({"n": int(ok.sum()), "failed": int((~ok).sum()), **table}))
    return EXIT_SOME_FAILED if (~ok).any() else EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    from ..video.manifest import import_fvq

    rows = import_fvq(args.scores, args.videos, args.out, seed=args.seed, scale=args.scale)
    counts = {s: sum(r.split == s for r in rows) for s in ("train", "val", "test")}
    print(json.dumps({"out": args.out, "rows": len(rows), **counts}))
    return EXIT_OK


def score_videos_cli(args: argparse.Namespace) -> int:
    """``feval score VIDEO... --model VIDEO_CKPT``: one row per video, appended to ``--out`` (resumable)."""
    from ..inputs.results import json_line
    from ..video.scorer import VideoScorer

    check_out_file("--out", args.out)
    check_min("--batch-size", args.batch_size)
    check_device(args.device)
    for flag in ("prompt", "ref", "lq", "question", "dims", "fiqa"):
        if getattr(args, flag, None):
            raise UsageError(f"--{flag} does not apply to video scoring (the video checkpoint scores video_quality)")
    scorer = VideoScorer.from_pretrained(args.model, device=args.device or "cpu", face_root=args.face_root,
                                         workers=args.workers)
    fps = getattr(args, "fps", None)
    if args.out:
        rows = scorer.score_to_file(args.inputs, args.out, fps=fps, batch_size=args.batch_size)
    else:
        rows = []
        for chunk in scorer.iter_records(args.inputs, fps=fps, batch_size=args.batch_size):
            rows += chunk
            sys.stdout.write("".join(json_line(r) for r in chunk))
            sys.stdout.flush()
    failed = sum(r.get("error") is not None for r in rows)
    if failed:
        logger.error("%d of %d videos could not be scored (see their 'error' fields)", failed, len(rows))
    return EXIT_SOME_FAILED if failed else EXIT_OK


def is_video_model(model: str | None) -> bool:
    """Whether ``--model`` names a video checkpoint: a local folder, or a hub id (its small files are fetched,
    from the cache under ``HF_HUB_OFFLINE=1``; an unreachable id is left to the image loader's error)."""
    from ..model.checkpoint import checkpoint_kind

    return checkpoint_kind(model) == "video"
