"""``feval train``: every :class:`~feval_core.train.config.TrainConfig` field as a command-line option.

A video manifest (rows with a ``"video"`` key) trains a video checkpoint instead, as ``feval video train`` does
(the same code): the options :class:`~feval_core.video.train.VideoTrainConfig` shares with ``TrainConfig`` keep
their meaning, the video-only ones (``--temporal-model``, ``--branches``, ...) are accepted, and image-only options
are refused.

Runs unchanged under ``accelerate launch`` (data parallel on several processes or GPUs)::

    feval train --manifest faceq/train.jsonl --base Qwen/Qwen2.5-VL-7B-Instruct --out runs/feval --precision bf16
    accelerate launch --num_processes 4 -m feval_core.cli train --manifest ... --base ... --out ...
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing
from pathlib import Path
from typing import Any

from .checks import (
    UsageError,
    check_dims,
    check_file,
    check_folder,
    check_model,
    check_out_folder,
)

_REQUIRED = ("manifest", "base", "out")
_CHOICES = {"schedule": "SCHEDULES", "precision": "PRECISIONS", "loss": "LOSSES", "lr_schedule": "LR_SCHEDULES",
            "split_by": "SPLIT_BY", "vision_experts": "VISION_EXPERTS"}


def _arg_type(tp: Any) -> Any:
    """int / float / str for a field type like ``int | None``."""
    if isinstance(tp, str):
        tp = {"int": int, "float": float, "str": str}.get(tp.split("|")[0].strip(), str)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


class _Given(argparse._StoreAction):
    """``store``, noting the option as given (``args.given``): a video manifest refuses the image-only ones."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        super().__call__(parser, namespace, values, option_string)
        namespace.given = (*namespace.given, self.dest)


class _GivenBool(argparse.BooleanOptionalAction):
    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        super().__call__(parser, namespace, values, option_string)
        namespace.given = (*namespace.given, self.dest)


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    from ..train import config as train_mod
    from .video import add_video_train_options

    p = sub.add_parser(name, help=help_text, description=help_text + "; the backbone and face encoder stay frozen. "
                       "A video manifest (rows with a \"video\" key) trains a video checkpoint as `feval video train` "
                       "does; options not given then take its defaults",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(train_mod.TrainConfig)
    for f in dataclasses.fields(train_mod.TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        default = None if f.default is dataclasses.MISSING else f.default
        if f.name in _REQUIRED:
            p.add_argument(flag, required=True, action=_Given, help=help_)
        elif f.name == "dims":
            p.add_argument(flag, action=_Given, help="comma-separated dimensions to train (default: all with a MOS)")
        elif hints[f.name] is bool:
            p.add_argument(flag, action=_GivenBool, default=default, help=help_)
        elif f.name in _CHOICES:
            p.add_argument(flag, action=_Given, choices=getattr(train_mod, _CHOICES[f.name]), default=default,
                           help=help_)
        else:
            p.add_argument(flag, action=_Given, type=_arg_type(hints[f.name]), default=default, help=help_ or None)
    names = frozenset(f.name for f in dataclasses.fields(train_mod.TrainConfig))
    add_video_train_options(p, skip=names, note="(video manifests only) ")
    p.set_defaults(func=cmd_train, given=())
    return p


def cmd_train(args: argparse.Namespace) -> int:
    from ..video.manifest import manifest_kind

    check_file("--manifest", args.manifest)
    if manifest_kind(args.manifest) == "video":
        return _train_video(args)
    video_only = [n for n in _video_only() if getattr(args, n, None) is not None]
    if video_only:
        raise UsageError(f"{_flags(video_only)} {_verb(video_only)} only to video manifests (rows with a "
                         "\"video\" key); "
                         f"{args.manifest} is an image manifest: drop them")
    cfg = train_config(args)
    check_train_paths(cfg)
    from ..train.loop import train

    result = train(cfg)
    from accelerate import PartialState

    if PartialState().is_main_process:
        if result.finished:
            print(f"trained checkpoint: {result.out} ({result.steps} steps, {result.seconds:.0f} s)", file=sys.stderr)
            for dim, m in result.val.items():
                probe = result.probe.get(dim)
                seen = f"  (linear probe of the frozen model: {probe['vision']:.4f})" if probe else ""
                print(f"  validation {dim}: SRCC {m['srcc']:.4f}  PLCC {m['plcc']:.4f}  (n={m['n']}){seen}",
                      file=sys.stderr)
            if result.router_accuracy == result.router_accuracy:  # not NaN
                print(f"  router: {result.router_accuracy:.1%} of held-out question paraphrases routed right",
                      file=sys.stderr)
        else:
            print(f"stopped after {result.steps} steps; continue with the same command and --resume",
                  file=sys.stderr)
    return 0


def _video_only() -> list[str]:
    from ..train.config import TrainConfig
    from ..video.train import VideoTrainConfig

    image = {f.name for f in dataclasses.fields(TrainConfig)}
    return [f.name for f in dataclasses.fields(VideoTrainConfig) if f.name not in image]


def _flags(names: list[str]) -> str:
    return ", ".join("--" + n.replace("_", "-") for n in names)


def _verb(names: list[str]) -> str:
    return "applies" if len(names) == 1 else "apply"


def _train_video(args: argparse.Namespace) -> int:
    """``feval train`` on a video manifest: ``feval video train``'s code, with the options given."""
    from ..video.train import VideoTrainConfig
    from .video import run_video_train, video_train_config

    fields = {f.name for f in dataclasses.fields(VideoTrainConfig)}
    image_only = sorted({n for n in args.given if n not in fields | {"manifest", "out"}})
    if image_only:
        raise UsageError(f"{_flags(image_only)} {_verb(image_only)} only to image manifests; {args.manifest} is a "
                         "video manifest "
                         "(rows with a \"video\" key): drop them (video rows take their validation split from "
                         "\"split\"; see `feval video train --help` for the video options)")
    values = {n: getattr(args, n) for n in fields if n in args.given or hasattr(args, n) and n in _video_only()}
    cfg = video_train_config(values)
    check_model("--base", cfg.base, checkpoint=False)
    check_folder("--face-root", cfg.face_root, "models/<pack>")
    return run_video_train(cfg, args.manifest, args.out)


def train_config(args: argparse.Namespace) -> Any:
    """The validated :class:`~feval_core.train.config.TrainConfig` of the command line (no torch yet)."""
    from ..errors import ConfigError
    from ..train.config import TrainConfig

    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    values = {name: getattr(args, name) for name in fields}
    values["dims"] = check_dims(values["dims"])
    try:
        return TrainConfig(**values)
    except ConfigError as exc:  # name the options as the user typed them
        def flag(m: re.Match[str]) -> str:
            return "--" + m.group(0).replace("_", "-") if m.group(0) in fields else m.group(0)

        # the field names a message starts with ("lr must be", "eval_every and num_workers must be")
        head, sep, rest = str(exc).partition(" must ")
        head = re.sub(r"\w+", flag, head) if len(head) < 60 and sep else re.sub(r"^\w+", flag, head)
        raise UsageError(head + sep + rest) from exc


def check_train_paths(cfg: Any) -> None:
    """The files and folders a training run reads and writes, before anything is loaded."""
    from ..train.config import TRAIN_CONFIG_NAME

    check_file("--manifest", cfg.manifest)
    check_file("--val-manifest", cfg.val_manifest)
    check_model("--base", cfg.base, checkpoint=False)
    check_folder("--face-root", cfg.face_root, "models/<pack>")
    check_out_folder("--out", cfg.out)
    if cfg.resume and not (Path(cfg.out).expanduser() / TRAIN_CONFIG_NAME).is_file():
        raise UsageError(f"--resume: {cfg.out} has no {TRAIN_CONFIG_NAME}; start a new run without --resume")
