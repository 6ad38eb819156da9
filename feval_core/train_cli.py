"""``feval train``: every :class:`~feval_core.train.TrainConfig` field as a command-line option.

Runs unchanged under ``accelerate launch`` (data parallel on several processes or GPUs)::

    feval train --manifest faceq/train.jsonl --base Qwen/Qwen2.5-VL-7B-Instruct --out runs/feval --precision bf16
    accelerate launch --num_processes 4 -m feval_core.cli train --manifest ... --base ... --out ...
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import Any

_REQUIRED = ("manifest", "base", "out")
_CHOICES = {"schedule": "SCHEDULES", "precision": "PRECISIONS", "loss": "LOSSES", "lr_schedule": "LR_SCHEDULES",
            "split_by": "SPLIT_BY"}


def _arg_type(tp: Any) -> Any:
    """int / float / str for a field type like ``int | None``."""
    if isinstance(tp, str):
        tp = {"int": int, "float": float, "str": str}.get(tp.split("|")[0].strip(), str)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    from . import train_config as train_mod

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
    from .dimensions import parse_dims
    from .train import train
    from .train_config import TrainConfig

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    if values["dims"] is not None:
        values["dims"] = parse_dims(values["dims"])
    result = train(TrainConfig(**values))
    from accelerate import PartialState

    if PartialState().is_main_process:
        if result.finished:
            print(f"trained checkpoint: {result.out} ({result.steps} steps, {result.seconds:.0f} s)", file=sys.stderr)
            for dim, m in result.val.items():
                print(f"  validation {dim}: SRCC {m['srcc']:.4f}  PLCC {m['plcc']:.4f}  (n={m['n']})",
                      file=sys.stderr)
        else:
            print(f"stopped after {result.steps} steps; continue with the same command and --resume",
                  file=sys.stderr)
    return 0
