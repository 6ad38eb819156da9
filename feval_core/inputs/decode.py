"""Files and PIL images -> RGB ``PIL.Image``: :func:`load_image`, its size limits and PIL modes.

:func:`load_image` takes one :class:`ImageItem` or single-image source (path, PIL image, numpy array,
torch tensor; arrays and tensors are converted by :mod:`.arrays`) and gives a new RGB image: EXIF
orientation applied, alpha composited on **white**, 16-bit scaled, first frame of animations. Images
past :data:`MAX_SIDE` or ``max_pixels`` are refused before decoding. :func:`pad_to_aspect` pads
extremely elongated images to :data:`MAX_ASPECT`:1 for vision-language models.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import ImageInputError
from .arrays import (
    _array_to_rgb,
    _float_to_u8,
    _hw,
    _is_tensor,
    _single,
    _tensor_to_rgb,
    _u16_to_u8,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000
"""Largest width x height accepted per image; guards against decompression bombs."""

MIN_SIDE = 1
MAX_SIDE = 32_768
"""Largest width or height accepted, whatever ``max_pixels`` says."""

MAX_ASPECT = 200
"""Longest/shortest side ratio given to a VLM; :func:`pad_to_aspect` pads beyond it (Qwen2-VL refuses > 200)."""

# Formats Pillow may open but feval never decodes: EPS/PS decoding runs Ghostscript on the file.
_UNSAFE_FORMATS = frozenset({"EPS"})
_TRUNCATED_LOCK = threading.Lock()
_OPEN_LOCK = threading.Lock()


@dataclass(frozen=True)
class ImageItem:
    """One image: ``source`` is a path, a PIL image or a per-image array/tensor view; ``name`` is what
    a results row calls it (the path as given for files, else ``"<input {index}>"``)."""

    source: Any
    name: str


def load_image(item_or_source: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Return the image as a new ``PIL.Image`` in mode ``"RGB"``, same size as the input.

    Accepts an :class:`ImageItem` or any single-image source (path, PIL image, numpy array, torch
    tensor; a batch of one is accepted too). EXIF orientation is applied; alpha and transparency are
    composited on white; 16-bit data is scaled (not clipped) to 8 bits; animated files give their first
    frame. Images wider or taller than ``MAX_SIDE`` or with more than ``max_pixels`` pixels are refused
    before decoding. Raises ImageInputError naming the input, the reason and the fix.
    """
    if isinstance(item_or_source, ImageItem):
        source, name = item_or_source.source, item_or_source.name
    else:
        source = item_or_source
        name = os.fsdecode(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else "<input>"
    if isinstance(source, (str, os.PathLike)):
        return _load_file(os.fspath(source), name, max_pixels)
    if isinstance(source, Image.Image):
        return _load_pil(source, name, max_pixels)
    if isinstance(source, np.ndarray):
        return _load_array(source, name, max_pixels)
    if _is_tensor(source):
        return _load_tensor(source, name, max_pixels)
    if isinstance(source, (list, tuple)):
        raise ImageInputError(
            f"{name}: got a {type(source).__name__} of {len(source)}; load_image takes one image, "
            "split lists with expand_inputs() first"
        )
    raise ImageInputError(_unsupported_type(source, name))


def aspect_padding(width: int, height: int, max_aspect: float = MAX_ASPECT) -> tuple[int, int, int, int] | None:
    """``(new_width, new_height, left, top)`` that pads a ``width x height`` image, centred, to ``max_aspect``:1;
    None when it is within the limit. The one rule for PIL images and tensors alike."""
    w, h = width, height
    if max(w, h) <= max_aspect * min(w, h):
        return None
    new_w, new_h = (w, -(-w // int(max_aspect))) if w > h else (-(-h // int(max_aspect)), h)
    return new_w, new_h, (new_w - w) // 2, (new_h - h) // 2


def pad_to_aspect(image: Image.Image, max_aspect: float = MAX_ASPECT) -> Image.Image:
    """Pad an extremely elongated image with black, centred, to ``max_aspect``:1; others are returned as is.

    Vision-language processors refuse or mangle strips such as 4000x1 (Qwen2-VL raises above 200:1);
    padding keeps every pixel and lets such an input score like any other.
    """
    pad = aspect_padding(*image.size, max_aspect)
    if pad is None:
        return image
    new_w, new_h, left, top = pad
    logger.debug("padding a %dx%d image to %dx%d (aspect ratio limit %s:1)", *image.size, new_w, new_h, max_aspect)
    canvas = Image.new(image.mode, (new_w, new_h))
    canvas.paste(image, (left, top))
    return canvas


def to_rgb_array(item_or_source: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """:func:`load_image` as a ``uint8`` numpy array of shape ``[H, W, 3]``."""
    return np.asarray(load_image(item_or_source, max_pixels=max_pixels))


def _load_file(path: str | bytes, name: str, max_pixels: int) -> Image.Image:
    path = os.fsdecode(path)
    if not os.path.exists(path):
        hint = (
            "feval does not download URLs; download the file first"
            if path.startswith(("http://", "https://"))
            else "check the path"
        )
        raise ImageInputError(f"{name}: file not found; {hint}")
    if os.path.isdir(path):
        raise ImageInputError(f"{name}: is a folder; pass it to expand_inputs() to get the images inside")
    if os.path.getsize(path) == 0:
        raise ImageInputError(f"{name}: empty file (0 bytes); re-export or re-download it")
    try:
        # Pillow warns on a huge header (and raises past twice its limit): make both a refusal.
        # catch_warnings is process-global before Python 3.14, so only the cheap header parse runs
        # under it, behind a lock; the size check below refuses large images before decoding.
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(path, formats=_open_formats())
        with opened as im:
            _check_size(im.size, name, max_pixels)
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                logger.debug("%s: %d frames; using the first frame", name, frames)
                im.seek(0)
            _load_strict(im)
            rgb = _to_rgb(ImageOps.exif_transpose(im), name)
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageInputError(
            f"{name}: too large: Pillow refused it as a possible decompression bomb ({err}); "
            "downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS and max_pixels"
        ) from err
    except UnidentifiedImageError as err:
        raise ImageInputError(
            f"{name}: not an image file (Pillow cannot identify it); check that it is a "
            "PNG/JPEG/WebP/BMP/TIFF/GIF file and not something renamed"
        ) from err
    except PermissionError as err:
        raise ImageInputError(f"{name}: cannot read the file: {err.strerror}") from err
    except Exception as err:  # Pillow raises many types on corrupt data
        reason = "truncated" if "truncated" in str(err).lower() else "corrupt image data"
        raise ImageInputError(
            f"{name}: {reason} ({type(err).__name__}: {err}); re-export or re-download the file"
        ) from err
    return rgb


def _open_formats() -> list[str]:
    Image.init()
    return [fmt for fmt in Image.ID if fmt not in _UNSAFE_FORMATS]


def _load_strict(im: Image.Image) -> None:
    """``im.load()`` refusing truncated data even if someone set ``LOAD_TRUNCATED_IMAGES``."""
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        im.load()
        return
    with _TRUNCATED_LOCK:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            im.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = True


def _load_pil(im: Image.Image, name: str, max_pixels: int) -> Image.Image:
    _check_size(im.size, name, max_pixels)
    try:
        _load_strict(im)  # a PIL image opened lazily from a file may not be decoded yet
        oriented = ImageOps.exif_transpose(im)
    except Exception as err:  # Pillow raises many types on corrupt data
        reason = "truncated" if "truncated" in str(err).lower() else "corrupt image data"
        raise ImageInputError(f"{name}: {reason} ({type(err).__name__}: {err})") from err
    return _to_rgb(oriented, name)


def _check_size(size: tuple[int, int], name: str, max_pixels: int) -> None:
    w, h = size
    if w < MIN_SIDE or h < MIN_SIDE:
        raise ImageInputError(f"{name}: empty image ({w}x{h} pixels)")
    if max(w, h) > MAX_SIDE:
        raise ImageInputError(f"{name}: too large: {w}x{h}, a side exceeds {MAX_SIDE} pixels; downscale it")
    if w * h > max_pixels:
        raise ImageInputError(
            f"{name}: too large: {w}x{h} = {w * h} pixels > max_pixels ({max_pixels}); "
            "downscale it or raise max_pixels"
        )


# ---------------------------------------------------------------------------------------------------
# PIL modes -> RGB


def _to_rgb(im: Image.Image, name: str) -> Image.Image:
    """Convert any PIL mode to RGB: alpha/transparency on white, 16-bit scaled, float in [0, 1]."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode.startswith("I;16"):
        return _gray_to_rgb(_u16_to_u8(np.asarray(im).astype(np.uint16)))
    if mode == "I":
        data = np.asarray(im)
        if data.size and (data.min() < 0 or data.max() > 65535):
            raise ImageInputError(
                f"{name}: mode I values span [{data.min()}, {data.max()}]; feval reads mode I as "
                "16-bit (0..65535): convert it to 8-bit RGB first"
            )
        return _gray_to_rgb(_u16_to_u8(data.astype(np.uint16)))
    if mode == "F":
        return _gray_to_rgb(_float_to_u8(np.asarray(im), name))
    try:
        if "A" in im.getbands() or "a" in im.getbands() or "transparency" in im.info:
            return _composite_on_white(im.convert("RGBA"))
        return im.convert("RGB")
    except ValueError as err:
        raise ImageInputError(
            f"{name}: unsupported PIL mode {mode!r} ({err}); convert it to RGB first"
        ) from err


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(gray).convert("RGB")


# ---------------------------------------------------------------------------------------------------
# numpy / torch (converted by .arrays) and unsupported types


def _load_array(arr: np.ndarray, name: str, max_pixels: int) -> Image.Image:
    layout = _single(arr.shape, torch=False, name=name)
    _check_size(_hw(arr.shape, layout), name, max_pixels)
    return _array_to_rgb(arr, layout, name)


def _load_tensor(t: Any, name: str, max_pixels: int) -> Image.Image:
    shape = tuple(t.shape)
    layout = _single(shape, torch=True, name=name)
    _check_size(_hw(shape, layout), name, max_pixels)
    return _tensor_to_rgb(t, layout, name)


def _unsupported_type(obj: Any, name: str) -> str:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return (
            f"{name}: got encoded bytes; open them with PIL.Image.open(io.BytesIO(data)) "
            "or save them to a file"
        )
    return (
        f"{name}: unsupported input type {type(obj).__name__}; pass a path, a folder, a PIL image, "
        "a numpy array (HW, HWC, BHWC) or a torch tensor (CHW, HWC, BCHW, BHWC)"
    )
