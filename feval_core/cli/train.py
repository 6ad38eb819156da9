"""``feval train``: every :class:`~feval_core.train.config.TrainConfig` field as a command-line option.

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


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    from ..train import config as train_mod

    p = sub.add_parser(name, help=help_text, description=help_text + "; the backbone and face encoder stay frozen",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(train_mod.TrainConfig)
    for f in dataclasses.fields(train_mod.TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        default = None if f.default is dataclasses.MISSING else f.default
        if f.name in _REQUIRED:
            p.add_argument(flag, required=True, help=help_)
        elif f.name == "dims":
            p.add_argument(flag, help="comma-separated dimensions to train (default: all with a MOS)")
        elif hints[f.name] is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_)
        elif f.name in _CHOICES:
            p.add_argument(flag, choices=getattr(train_mod, _CHOICES[f.name]), default=default, help=help_)
        else:
            p.add_argument(flag, type=_arg_type(hints[f.name]), default=default, help=help_ or None)
    p.set_defaults(func=cmd_train)
    return p


def cmd_train(args: argparse.Namespace) -> int:
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
