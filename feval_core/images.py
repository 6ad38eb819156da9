"""Turn what users pass as images (paths, folders, PIL, numpy, torch) into RGB PIL images.

:func:`expand_inputs` flattens user input into one :class:`ImageItem` per image (batches are split into
views, folders into their image files); :func:`load_image` turns one item into an RGB ``PIL.Image``.
Every failure is an :class:`~feval_core.errors.ImageInputError` whose message starts with the input's
name, gives the reason and says what to do. Alpha is always composited on **white**.

Array layouts: numpy is channels-last (``HW``, ``HWC``, ``BHWC``); torch accepts ``HW``, ``CHW``,
``HWC``, ``BCHW`` and ``BHWC``, the channel axis being the candidate axis whose size is 1, 3 or 4.
Values: ``uint8`` (0..255), ``uint16`` (0..65535), ``bool``, or float in [0, 1].
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from collections.abc import Sized
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageInputError, InputMismatchError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)
"""File extensions (lower case) picked up when a folder is expanded."""

DEFAULT_MAX_PIXELS = 40_000_000
"""Largest width x height accepted per image; guards against decompression bombs."""

MIN_SIDE = 1
MAX_SIDE = 32_768
"""Largest width or height accepted, whatever ``max_pixels`` says."""

MAX_ASPECT = 200
"""Longest/shortest side ratio given to a VLM; :func:`pad_to_aspect` pads beyond it (Qwen2-VL refuses > 200)."""

FLOAT_TOLERANCE = 1e-3
"""Float pixels may stray this far outside [0, 1] (rounding noise) before they are refused."""

CHANNEL_SIZES: frozenset[int] = frozenset({1, 3, 4})

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
# load_image


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


def pad_to_aspect(image: Image.Image, max_aspect: float = MAX_ASPECT) -> Image.Image:
    """Pad an extremely elongated image with black, centred, to ``max_aspect``:1; others are returned as is.

    Vision-language processors refuse or mangle strips such as 4000x1 (Qwen2-VL raises above 200:1);
    padding keeps every pixel and lets such an input score like any other.
    """
    w, h = image.size
    if max(w, h) <= max_aspect * min(w, h):
        return image
    new_w, new_h = (w, -(-w // int(max_aspect))) if w > h else (-(-h // int(max_aspect)), h)
    logger.debug("padding a %dx%d image to %dx%d (aspect ratio limit %s:1)", w, h, new_w, new_h, max_aspect)
    canvas = Image.new(image.mode, (new_w, new_h))
    canvas.paste(image, ((new_w - w) // 2, (new_h - h) // 2))
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


def _u16_to_u8(data: np.ndarray) -> np.ndarray:
    """Scale 0..65535 to 0..255 with rounding (65535 -> 255, 257 -> 1)."""
    return ((data.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _float_to_u8(data: np.ndarray, name: str) -> np.ndarray:
    """Float in [0, 1] (within FLOAT_TOLERANCE) to uint8, refusing other ranges with a hint."""
    _check_float_range(data, name)
    return np.rint(np.clip(data.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def _check_float_range(data: np.ndarray, name: str) -> None:
    if data.size == 0:
        return
    if not np.isfinite(data).all():
        raise ImageInputError(
            f"{name}: contains NaN or infinite values; check the generator output "
            "(e.g. an fp16 VAE decode that overflowed)"
        )
    lo, hi = float(data.min()), float(data.max())
    if lo < -FLOAT_TOLERANCE or hi > 1 + FLOAT_TOLERANCE:
        if lo >= -1 - FLOAT_TOLERANCE and hi <= 1 + FLOAT_TOLERANCE:
            hint = "looks like [-1, 1]: map with (x + 1) / 2"
        elif lo >= -FLOAT_TOLERANCE and hi <= 255 + FLOAT_TOLERANCE:
            hint = "looks like 0..255: divide by 255"
        else:
            hint = "rescale it to [0, 1]"
        raise ImageInputError(f"{name}: float values span [{lo:.4g}, {hi:.4g}], expected [0, 1]; {hint}")


# ---------------------------------------------------------------------------------------------------
# numpy / torch


def _is_tensor(obj: Any) -> bool:
    torch = sys.modules.get("torch")  # never import torch here: a tensor implies it is loaded
    return torch is not None and isinstance(obj, torch.Tensor)


def _layout(shape: tuple[int, ...], *, torch: bool, name: str) -> str:
    """Name the layout of an image array shape (``HW``, ``HWC``, ``CHW``, ``BHWC``, ``BCHW``) or raise.

    numpy is channels-last. torch: the channel axis is whichever of the two candidate axes (first and
    last of the per-image shape) has size 1, 3 or 4; if both do, the layout is ambiguous.
    """
    kind = "tensor" if torch else "array"
    accepted = "HW, CHW, HWC, BCHW or BHWC" if torch else "HW, HWC or BHWC"
    if len(shape) not in (2, 3, 4):
        raise ImageInputError(f"{name}: {kind} of shape {list(shape)} is {len(shape)}-D; expected {accepted}")
    if 0 in shape:
        raise ImageInputError(f"{name}: {kind} of shape {list(shape)} has a zero-size dimension")
    if len(shape) == 2:
        return "HW"
    batch = "B" if len(shape) == 4 else ""
    first, last = shape[-3], shape[-1]
    first_ok, last_ok = first in CHANNEL_SIZES, last in CHANNEL_SIZES
    if not torch:
        if last_ok:
            return batch + "HWC"
        hint = (
            f"it looks channels-first: numpy images are channels-last, use "
            f"a.transpose({'0, 2, 3, 1' if batch else '1, 2, 0'})"
            if first_ok
            else "channel counts 2 and 5+ are not supported"
        )
        raise ImageInputError(
            f"{name}: array of shape {list(shape)} has {last} channels, expected 1, 3 or 4 "
            f"(layout {accepted}); {hint}"
        )
    if first_ok and last_ok:
        chw, hwc = ("BCHW", "BHWC") if batch else ("CHW", "HWC")
        raise ImageInputError(
            f"{name}: tensor of shape {list(shape)} is ambiguous: it could be {chw} or {hwc} "
            f"(both axes {len(shape) - 3} and {len(shape) - 1} have size 1, 3 or 4); pass a list "
            "of PIL images, or permute it to a layout whose other axis is not 1, 3 or 4"
        )
    if first_ok:
        return batch + "CHW"
    if last_ok:
        return batch + "HWC"
    raise ImageInputError(
        f"{name}: tensor of shape {list(shape)} has no channel axis of size 1, 3 or 4 "
        f"(layout {accepted}); channel counts 2 and 5+ are not supported"
    )


def _single(shape: tuple[int, ...], *, torch: bool, name: str) -> str:
    """Layout of a one-image source; a batch of one is accepted, a larger batch is refused."""
    layout = _layout(shape, torch=torch, name=name)
    if layout.startswith("B") and shape[0] != 1:
        raise ImageInputError(
            f"{name}: {'tensor' if torch else 'array'} of shape {list(shape)} is a batch of "
            f"{shape[0]} images; split it with expand_inputs() first"
        )
    return layout


def _hw(shape: tuple[int, ...], layout: str) -> tuple[int, int]:
    """(width, height) of the image in ``shape`` with ``layout``."""
    core = shape[1:] if layout.startswith("B") else shape
    h_axis = 1 if layout.lstrip("B") == "CHW" else 0
    return core[h_axis + 1], core[h_axis]


def _load_array(arr: np.ndarray, name: str, max_pixels: int) -> Image.Image:
    layout = _single(arr.shape, torch=False, name=name)
    _check_size(_hw(arr.shape, layout), name, max_pixels)
    if layout.startswith("B"):
        arr = arr[0]
    return _hwc_to_rgb(arr, name)


def _load_tensor(t: Any, name: str, max_pixels: int) -> Image.Image:
    import torch

    shape = tuple(t.shape)
    layout = _single(shape, torch=True, name=name)
    _check_size(_hw(shape, layout), name, max_pixels)
    t = t.detach()
    if layout.startswith("B"):
        t = t[0]
    if layout.endswith("CHW"):
        t = t.permute(1, 2, 0)
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.to("cpu", torch.float32)
    elif t.dtype == torch.uint16:
        t = t.to("cpu", torch.int32)
        return _hwc_to_rgb(t.numpy().astype(np.uint16), name)
    elif t.dtype in (torch.float32, torch.float64, torch.uint8, torch.bool):
        t = t.to("cpu")
    else:
        raise ImageInputError(
            f"{name}: unsupported tensor dtype {t.dtype}; pass uint8 (0..255) or float in [0, 1], "
            "e.g. t.float() / 255 or t.to(torch.uint8)"
        )
    return _hwc_to_rgb(t.numpy(), name)


_FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def _hwc_to_rgb(arr: np.ndarray, name: str) -> Image.Image:
    """``HW`` or ``HWC`` (C in 1, 3, 4) of a supported dtype to a new RGB image."""
    if arr.dtype in _FLOAT_DTYPES:
        _check_float_range(arr, name)
    elif arr.dtype not in (np.uint8, np.uint16, np.bool_):
        raise ImageInputError(
            f"{name}: unsupported array dtype {arr.dtype}; pass uint8 (0..255), uint16 (0..65535), "
            "bool or float in [0, 1]"
        )
    if arr.ndim == 3 and arr.shape[2] == 4:  # composite on white before quantizing to 8 bits
        unit = _to_unit(arr)
        rgb = unit[:, :, :3] * unit[:, :, 3:] + (1.0 - unit[:, :, 3:])
        return Image.fromarray(np.rint(rgb * 255.0).astype(np.uint8))
    if arr.dtype == np.uint8:
        data = arr
    elif arr.dtype == np.bool_:
        data = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        data = _u16_to_u8(arr)
    else:
        data = np.rint(np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    if data.ndim == 3:
        data = data[:, :, 0] if data.shape[2] == 1 else data
    im = Image.fromarray(np.ascontiguousarray(data))  # HW -> L, HWx3 -> RGB
    return im.convert("RGB") if im.mode != "RGB" else im.copy()


def _to_unit(arr: np.ndarray) -> np.ndarray:
    """A validated array as float32 in [0, 1]."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


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
