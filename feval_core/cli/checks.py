"""Argument checks that run before any model is loaded: a bad argument is one line on stderr and exit 2.

Every check raises :class:`UsageError` with a message that names the option, the value and what to change.
Nothing here loads a model, a processor or a scorer; only :func:`check_device` imports torch (to count GPUs).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import FEvalError

_DEVICE = re.compile(r"(cpu|cuda|mps|xpu)(?::(\d+))?")
_DEVICE_HINT = "use cpu, cuda, cuda:N, mps or xpu"


class UsageError(FEvalError):
    """A command-line argument is wrong; the message says what to change."""


# -- numbers and names ----------------------------------------------------------------------------------------
def check_min(flag: str, value: int | None, minimum: int = 1) -> None:
    """``value`` (when given) is at least ``minimum``."""
    if value is not None and value < minimum:
        raise UsageError(f"{flag} must be >= {minimum}, got {value}")


def check_dims(value: str | None) -> tuple[str, ...] | None:
    """The dimensions ``--dims`` names (None when not given)."""
    if value is None:
        return None
    from ..dimensions import parse_dims

    try:
        return parse_dims(value)
    except ValueError as exc:
        raise UsageError(f"--dims {value}: {exc}") from exc


def parse_fractions(value: str) -> list[float]:
    """``--fractions`` of ``feval split``: three finite, non-negative numbers that sum to 1."""
    try:
        fractions = [float(x) for x in value.split(",")]
        if len(fractions) != 3:
            raise ValueError
    except ValueError:
        raise UsageError(f"--fractions must be three numbers (train,val,test) like 0.8,0.05,0.15; "
                         f"got {value!r}") from None
    if any(not math.isfinite(f) or f < 0 for f in fractions):
        raise UsageError(f"--fractions must be finite and >= 0, like 0.8,0.05,0.15; got {value!r}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise UsageError(f"--fractions must sum to 1, like 0.8,0.05,0.15; got {value!r} (sum {sum(fractions):g})")
    return fractions


def check_device(value: str | None) -> None:
    """``--device`` names a device this machine has (None: the command picks one)."""
    if value is None:
        return
    m = _DEVICE.fullmatch(value)
    if m is None:
        raise UsageError(f"--device {value}: not a device; {_DEVICE_HINT}")
    kind, index = m.group(1), m.group(2)
    if kind == "cpu":
        return
    import torch

    if kind == "mps":
        backend = getattr(torch.backends, "mps", None)
        count = 1 if backend is not None and backend.is_available() else 0
    else:
        module = getattr(torch, kind, None)
        count = module.device_count() if module is not None and module.is_available() else 0
    label = kind.upper()
    if count == 0:
        what = f"{label} device {index}" if index is not None else f"{label} device"
        raise UsageError(f"--device {value}: this machine has no {what} (it has 0); use --device cpu")
    if index is not None and int(index) >= count:
        valid = f"{kind}:0" if count == 1 else f"{kind}:0 .. {kind}:{count - 1}"
        raise UsageError(f"--device {value}: this machine has no {label} device {index} (it has {count}); "
                         f"use --device {valid} or cpu")


# -- paths ----------------------------------------------------------------------------------------------------
def looks_like_hub_id(value: str) -> bool:
    """``org/name``, as :func:`~feval_core.model.checkpoint.resolve_checkpoint` tells a hub id from a path."""
    parts = value.split("/")
    return not value.startswith((".", "/", "~")) and len(parts) == 2 and all(p.strip() for p in parts)


def check_model(flag: str, value: str, *, checkpoint: bool = True) -> None:
    """A local folder that exists (with ``feval_config.json`` or ``config.json`` when ``checkpoint``) or a hub id.

    Nothing is loaded or downloaded: a hub id is only checked for its ``org/name`` shape.
    """
    path = Path(value).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"{flag} {value}: is a file; pass the model folder or a hub id like org/name")
        if checkpoint:
            from ..model.config import CONFIG_NAME

            if not ((path / CONFIG_NAME).exists() or (path / CONFIG_NAME).is_symlink()
                    or (path / "config.json").is_file()):
                raise UsageError(f"{flag} {value}: holds neither {CONFIG_NAME} (a feval checkpoint) nor "
                                 "config.json (a VLM); pass the checkpoint folder")
        return
    if not looks_like_hub_id(value):
        raise UsageError(f"{flag} {value}: no such folder, and not a hub id like org/name; check the path")


def check_fiqa_model(flag: str, value: str | None) -> None:
    """A ViT-FIQA model folder (with ``fiqa_config.json``), when given."""
    if value is None:
        return
    from ..fiqa.config import FIQA_CONFIG_NAME

    check_folder(flag, value, f"{FIQA_CONFIG_NAME} and model.safetensors")
    if not (Path(value).expanduser() / FIQA_CONFIG_NAME).is_file():
        raise UsageError(f"{flag} {value}: no {FIQA_CONFIG_NAME}; pass a ViT-FIQA folder (from `feval fiqa train`, "
                         "`feval fiqa import` or `feval make-tiny --fiqa`)")


def check_questions(questions: Sequence[str] | None, model: str) -> None:
    """``--question`` texts are not empty, and a local model is a trained checkpoint (zero-shot has no router)."""
    if not questions:
        return
    if any(not q.strip() for q in questions):
        raise UsageError("--question is empty; ask something, e.g. --question \"How natural does this face look?\"")
    from ..model.config import CONFIG_NAME, FEvalConfig

    path = Path(model).expanduser()
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        from ..errors import ConfigError

        try:
            trained = FEvalConfig.load(path).mode == "trained"
        except ConfigError:
            return  # the loader says what is wrong with the checkpoint
    else:
        trained = not path.is_dir()  # a plain VLM folder is zero-shot; a hub id is checked when it loads
    if not trained:
        raise UsageError(f"--question needs a trained checkpoint (its router picks the expert); {model} scores "
                         "zero-shot: ask for dimensions with --dims instead")


def check_file(flag: str, value: str | None) -> None:
    """``value`` (when given) is an existing file."""
    if value is None:
        return
    path = Path(value).expanduser()
    if path.is_dir():
        raise UsageError(f"{flag} {value}: is a folder; give a file")
    if not path.is_file():
        raise UsageError(f"{flag} {value}: no such file; check the path")


def check_folder(flag: str, value: str | None, what: str = "") -> None:
    """``value`` (when given) is an existing folder; ``what`` says what it should hold."""
    if value is None:
        return
    path = Path(value).expanduser()
    hint = f"; it should hold {what}" if what else "; check the path"
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {value}: is a file, not a folder{hint}")
    if not path.is_dir():
        raise UsageError(f"{flag} {value}: no such folder{hint}")


def check_out_file(flag: str, value: str | None, example: str = "scores.jsonl") -> None:
    """An output file: not an existing folder, and not inside a file (missing folders are created)."""
    if value is None:
        return
    path = Path(value).expanduser()
    if path.is_dir():
        raise UsageError(f"{flag} {value}: is a folder; give a file name such as "
                         f"{os.path.join(value.rstrip('/') or '/', example)}")
    check_out_folder(flag, str(path.parent))


def check_out_folder(flag: str, value: str | None) -> None:
    """An output folder (created if missing): not an existing file, nor inside one."""
    if value is None:
        return
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {value}: is a file; give a folder (it is created if missing)")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{flag} {value}: {parent} is a file, not a folder; choose another path")
            return


# -- images ---------------------------------------------------------------------------------------------------
def _is_image(entry: os.DirEntry[str]) -> bool:
    from ..inputs.images import IMAGE_EXTENSIONS

    name = entry.name
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and entry.is_file()


def _has_images(folder: str, recursive: bool) -> bool:
    """Whether ``folder`` holds an image file (in sub-folders too when ``recursive``), as expand_inputs finds."""
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    if _is_image(entry):
                        return True
                    if recursive and not entry.name.startswith(".") and entry.is_dir():
                        stack.append(entry.path)
        except OSError:
            continue
    return False


def check_image_folders(inputs: Sequence[str], recursive: bool) -> None:
    """Every folder among ``inputs`` holds images (missing paths are left to become error rows)."""
    from ..inputs.images import IMAGE_EXTENSIONS

    for value in inputs:
        if not os.path.isdir(value) or _has_images(value, recursive):
            continue
        looked = " ".join(sorted(IMAGE_EXTENSIONS))
        hint = ""
        if not recursive and _has_images(value, True):
            hint = "; its sub-folders have some: add --recursive"
        where = " or its sub-folders" if recursive else ""
        raise UsageError(f"{value}: no images in this folder{where} (looked for {looked}){hint}")


# -- shared by score, eval and bench --------------------------------------------------------------------------
def check_scoring_options(args: Any) -> None:
    """``--model``, ``--device``, ``--dims``, ``--batch-size``, ``--face-root`` of a command that scores."""
    check_min("--batch-size", args.batch_size)
    check_dims(args.dims)
    check_folder("--face-root", args.face_root, "models/<pack>")
    check_model("--model", args.model)
    check_device(args.device)
