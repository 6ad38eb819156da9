"""Expand what users pass as images (paths, folders, PIL, numpy, torch) and line prompts and references up.

:func:`expand_inputs` flattens user input into one :class:`ImageItem` per image (batches are split into
views, folders into their image files); :func:`broadcast` and :func:`check_same_length` line other
per-image arguments up with them. Every failure is an :class:`~feval_core.errors.ImageInputError` (or
:class:`~feval_core.errors.InputMismatchError`) whose message names the input, the reason and the fix.

Decoding lives in :mod:`.decode` (files, PIL images, :func:`load_image`) and :mod:`.arrays` (numpy and
torch layouts and values); their public names are re-exported here, so ``from
feval_core.inputs.images import load_image`` keeps working.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sized
from typing import Any

import numpy as np
from PIL import Image

from ..errors import ImageInputError, InputMismatchError
from .arrays import CHANNEL_SIZES, FLOAT_TOLERANCE, _is_tensor, _layout
from .decode import (
    DEFAULT_MAX_PIXELS,
    MAX_ASPECT,
    MAX_SIDE,
    MIN_SIDE,
    ImageItem,
    _unsupported_type,
    aspect_padding,
    load_image,
    pad_to_aspect,
    to_rgb_array,
)

__all__ = [
    "CHANNEL_SIZES",
    "DEFAULT_MAX_PIXELS",
    "FLOAT_TOLERANCE",
    "IMAGE_EXTENSIONS",
    "MAX_ASPECT",
    "MAX_SIDE",
    "MIN_SIDE",
    "ImageItem",
    "aspect_padding",
    "broadcast",
    "check_same_length",
    "expand_inputs",
    "load_image",
    "pad_to_aspect",
    "to_rgb_array",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)
"""File extensions (lower case) picked up when a folder is expanded."""


# ---------------------------------------------------------------------------------------------------
# expand_inputs


def expand_inputs(images: Any, *, recursive: bool = False) -> list[ImageItem]:
    """Flatten user input into one :class:`ImageItem` per image, in order.

    ``images`` is one of, or a list/tuple mixing: a path (a file gives one item; a folder gives its
    files whose extension is in :data:`IMAGE_EXTENSIONS`, case-insensitive, sorted by name, hidden
    files skipped, sub-folders only when ``recursive``; a missing path still gives one item, so it
    gets its own error later), a ``PIL.Image.Image``, a numpy array (``HW``/``HWC`` one image,
    ``BHWC`` a batch) or a torch tensor (``HW``/``CHW``/``HWC`` one image, ``BCHW``/``BHWC`` a batch).
    Batches are split into per-image views without copying; an empty batch gives no items.

    Raises ImageInputError for an unsupported type or an array/tensor shape that is not an image
    layout (checked from the shape only; pixel values are checked by :func:`load_image`).
    """
    inputs = list(images) if isinstance(images, (list, tuple)) else [images]
    items: list[ImageItem] = []
    for obj in inputs:
        if isinstance(obj, (list, tuple)):
            raise ImageInputError(
                f"<input {len(items)}>: nested lists are not supported; pass one flat list of images"
            )
        _expand_one(obj, items, recursive)
    return items


def _expand_one(obj: Any, items: list[ImageItem], recursive: bool) -> None:
    name = f"<input {len(items)}>"
    if isinstance(obj, (str, os.PathLike)):
        path = os.fsdecode(os.fspath(obj))
        if os.path.isdir(path):
            files = _scan_dir(path, recursive)
            if not files:
                logger.warning("%s: folder holds no image files (%s)", path, _extension_list())
            items.extend(ImageItem(f, f) for f in files)
        else:
            items.append(ImageItem(obj, path))
    elif isinstance(obj, Image.Image):
        items.append(ImageItem(obj, name))
    elif isinstance(obj, np.ndarray) or _is_tensor(obj):
        shape = tuple(obj.shape)
        if len(shape) == 4 and shape[0] == 0:
            logger.debug("%s: empty batch of shape %s gives no images", name, shape)
            return
        layout = _layout(shape, torch=not isinstance(obj, np.ndarray), name=name)
        if layout.startswith("B"):
            start = len(items)
            items.extend(ImageItem(obj[i], f"<input {start + i}>") for i in range(shape[0]))
        else:
            items.append(ImageItem(obj, name))
    else:
        raise ImageInputError(_unsupported_type(obj, name))


def _scan_dir(root: str, recursive: bool) -> list[str]:
    """Image files under ``root`` (relative order: by path components), joined to ``root``."""
    found: list[tuple[str, ...]] = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = os.path.relpath(dirpath, root)
            parts = () if rel == os.curdir else tuple(rel.split(os.sep))
            found.extend((*parts, f) for f in filenames if _is_image_name(f))
    else:
        with os.scandir(root) as entries:
            found.extend((e.name,) for e in entries if _is_image_name(e.name) and e.is_file())
    return [os.path.join(root, *parts) for parts in sorted(found)]


def _is_image_name(filename: str) -> bool:
    # Hidden files include macOS "._x.jpg" resource forks, which carry an image extension but no image.
    return not filename.startswith(".") and os.path.splitext(filename)[1].lower() in IMAGE_EXTENSIONS


def _extension_list() -> str:
    return "looked for " + " ".join(sorted(IMAGE_EXTENSIONS))


# ---------------------------------------------------------------------------------------------------
# lining up images with prompts and references


def check_same_length(name_a: str, a: Sized | int, name_b: str, b: Sized | int) -> None:
    """Raise InputMismatchError unless ``a`` and ``b`` (sized objects or counts) have the same length."""
    n_a = a if isinstance(a, int) else len(a)
    n_b = b if isinstance(b, int) else len(b)
    if n_a != n_b:
        raise InputMismatchError(_mismatch(name_a, n_a, name_b, n_b))


def broadcast(value: Any, n: int, name: str) -> list[Any]:
    """Line ``value`` up with ``n`` images: one entry per image.

    ``None`` gives ``[None] * n``; a list/tuple of length ``n`` is kept, of length 1 repeated; a
    numpy array or tensor with 4 dimensions is a batch (``B == n`` per image, ``B == 1`` repeated);
    anything else (a string, a path, a PIL image, a 3-D array/tensor) is one value for all images.
    Other lengths raise InputMismatchError.
    """
    if value is None:
        return [None] * n
    if isinstance(value, (list, tuple)):
        if len(value) == n:
            return list(value)
        if len(value) == 1:
            return list(value) * n
        raise InputMismatchError(_mismatch("images", n, name, len(value)))
    if (isinstance(value, np.ndarray) or _is_tensor(value)) and value.ndim == 4:
        batch = value.shape[0]
        if batch == n:
            return [value[i] for i in range(n)]
        if batch == 1:
            return [value[0]] * n
        raise InputMismatchError(_mismatch("images", n, name, batch))
    return [value] * n


def _mismatch(name_a: str, n_a: int, name_b: str, n_b: int) -> str:
    one_a, one_b = _singular(name_a), _singular(name_b)
    return f"got {n_a} {name_a} but {n_b} {name_b}; pass one {one_b} per {one_a} or a single {one_b} for all"


def _singular(word: str) -> str:
    return word[:-1] if word.endswith("s") and not word.endswith("ss") else word
