"""``feval video``: train and evaluate video checkpoints, import FVQ-20K; and ``feval score`` on videos (called by
:mod:`.score` when ``--model`` is a video checkpoint)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
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
    t.add_argument("--out", required=True, help="run folder: the checkpoint, resumable state, feature cache")
    add_video_train_options(t, required=("base", "temporal_model"))
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


def _rows(manifest: str, split: str | None, rows: list[Any] | None = None) -> list[tuple[Any, float]]:
    """(source, MOS) of the manifest's rows in ``split`` (all with None); ``rows``: the manifest already read."""
    from ..video.manifest import read_video_manifest
    from ..video.sources import VideoSource

    rows = [r for r in (read_video_manifest(manifest) if rows is None else rows) if split is None or r.split == split]
    if not rows:
        raise UsageError(f"{manifest} has no rows{f' in split {split!r}' if split else ''}")
    return [(VideoSource("file", str(r.video), str(r.video)), r.mos) for r in rows]


def add_video_train_options(p: argparse.ArgumentParser, *, skip: frozenset[str] = frozenset(),
                            required: tuple[str, ...] = (), note: str = "") -> list[str]:
    """One option per :class:`~feval_core.video.train.VideoTrainConfig` field not in ``skip`` (default None: the
    dataclass's default applies); returns the field names added."""
    from ..video.train import VideoTrainConfig

    added = []
    for f in dataclasses.fields(VideoTrainConfig):
        if f.name in skip:
            continue
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
        conv = int if kind.startswith("int") else float if kind.startswith("float") else _flag if kind == "bool" \
            else str
        flag, help_ = "--" + f.name.replace("_", "-"), note + (f.metadata.get("help") or "")
        extra: dict[str, Any] = {}
        if note:  # beside another command's options: absent unless given, the dataclass's default in the help
            default = f.default if f.default is not dataclasses.MISSING else "required"
            extra["default"] = argparse.SUPPRESS
            help_ += f" (default: {','.join(default) if isinstance(default, tuple) else default})"
        if "tuple" in kind:
            p.add_argument(flag, help=note + "comma-separated " + help_[len(note):], **extra)
        elif kind == "bool":  # --resume, --resume true, --train-vision-projector false
            p.add_argument(flag, type=_flag, nargs="?", const=True, help=help_ or None, **extra)
        else:
            p.add_argument(flag, type=conv, required=f.name in required, help=help_ or None, **extra)
        added.append(f.name)
    return added


def video_train_config(values: dict[str, Any]) -> Any:
    """The :class:`~feval_core.video.train.VideoTrainConfig` of parsed options (None: not given)."""
    from ..errors import ConfigError
    from ..video.train import VideoTrainConfig

    kw = {}
    for f in dataclasses.fields(VideoTrainConfig):
        v = values.get(f.name)
        if v is not None:
            kw[f.name] = tuple(x.strip() for x in v.split(",")) if "tuple" in str(f.type) and isinstance(v, str) \
                else v
    missing = [f.name for f in dataclasses.fields(VideoTrainConfig)
               if f.name not in kw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UsageError("a video manifest needs " + ", ".join("--" + m.replace("_", "-") for m in missing)
                         + " (e.g. --temporal-model MCG-NJU/videomae-base, a VideoMAE-family folder or hub id)")
    try:
        return VideoTrainConfig(**kw)
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc


def run_video_train(cfg: Any, manifest: str, out: str) -> int:
    """Train (or resume) a video checkpoint on a video manifest: ``feval video train`` and ``feval train`` on a video
    manifest. Rows with split "train" train and "val" validate (no split: every row trains)."""
    from ..scoring.scorer import _load_face_encoder
    from ..video.manifest import manifest_kind, read_video_manifest
    from ..video.train import process_device, train_video

    check_file("--manifest", manifest)
    check_out_folder("--out", out)
    manifest_kind(manifest, expect="video")
    rows = read_video_manifest(manifest)
    has_split = any(r.split for r in rows)
    train = _rows(manifest, "train" if has_split else None, rows)
    val = _rows(manifest, "val", rows) if any(r.split == "val" for r in rows) else []
    face = (_load_face_encoder(cfg.feval_config(), None, process_device(cfg.device), cfg.face_root)
            if "face" in cfg.branches else None)
    res = train_video(cfg, train, val, out=out, face_encoder=face)
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under `accelerate launch`, one summary
        return EXIT_OK
    print(json.dumps({"out": out, "steps": res.steps, "finished": res.finished, "val": res.val,
                      "skipped": len(res.skipped), "feature_cache": res.cache, "seconds": round(res.seconds, 1),
                      "processes": PartialState().num_processes}))
    if not res.finished:
        print(f"stopped after {res.steps} steps; continue with the same command and --resume", file=sys.stderr)
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    return run_video_train(video_train_config(vars(args)), args.manifest, args.out)


def cmd_eval(args: argparse.Namespace) -> int:
    check_file("--manifest", args.manifest)
    table = evaluate_video(args.model, args.manifest, split=args.split, rows_out=args.out, device=args.device,
                           batch_size=args.batch_size)
    print(json.dumps(table))
    return EXIT_SOME_FAILED if table["failed"] else EXIT_OK


def evaluate_video(model: str, manifest: str, *, split: str | None = None, rows_out: str | Path | None = None,
                   device: str | None = None, batch_size: int = 4, **scorer_kwargs: Any) -> dict[str, Any]:
    """SRCC / KRCC / PLCC of a video checkpoint on a video manifest (``n`` scored, ``failed`` unreadable); per-video
    rows appended to ``rows_out`` (resumable). ``feval video eval`` and ``feval eval`` on a video checkpoint."""
    import numpy as np

    from ..evaluate.metrics import correlation_table
    from ..video.manifest import manifest_kind
    from ..video.scorer import VideoScorer

    check_out_file("--out", None if rows_out is None else str(rows_out))
    check_min("--batch-size", batch_size)
    check_device(device)
    manifest_kind(manifest, expect="video")
    pairs = _rows(manifest, split)
    scorer = VideoScorer.from_pretrained(model, device=device or "cpu", **scorer_kwargs)
    sources = [s for s, _ in pairs]
    rows = (scorer.score_to_file(sources, rows_out, batch_size=batch_size) if rows_out
            else scorer.score(sources, batch_size=batch_size))
    by_name = {r["image"]: r.get("video_quality") for r in rows}
    pred = np.asarray([by_name.get(s.name) if by_name.get(s.name) is not None else np.nan for s, _ in pairs], float)
    ok = np.isfinite(pred)
    table = correlation_table(pred[ok], np.asarray([m for _, m in pairs])[ok])
    return {"n": int(ok.sum()), "failed": int((~ok).sum()), **table}


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
    for flag in ("prompt", "ref", "lq", "question", "dims", "fiqa", "prefilter", "prefilter_model"):
        if getattr(args, flag, None) is not None and getattr(args, flag, None) != []:
            raise UsageError(f"--{flag.replace('_', '-')} does not apply to video scoring (the video checkpoint "
                             "scores video_quality)")
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
