"""numpy arrays and torch tensors -> RGB ``PIL.Image``: layouts, dtypes and pixel value ranges.

Layouts: numpy is channels-last (``HW``, ``HWC``, ``BHWC``); torch accepts ``HW``, ``CHW``, ``HWC``,
``BCHW`` and ``BHWC``, the channel axis being the candidate axis whose size is 1, 3 or 4 (:func:`_layout`).
Values: ``uint8`` (0..255), ``uint16`` (0..65535, scaled to 8 bits), ``bool``, or float in [0, 1]
(:func:`_check_float_range`); alpha is composited on white. torch is never imported at module level.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from PIL import Image

from ..errors import ImageInputError

FLOAT_TOLERANCE = 1e-3
"""Float pixels may stray this far outside [0, 1] (rounding noise) before they are refused."""

CHANNEL_SIZES: frozenset[int] = frozenset({1, 3, 4})

_FLOAT_DTYPES = (np.float16, np.float32, np.float64)


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


def _array_to_rgb(arr: np.ndarray, layout: str, name: str) -> Image.Image:
    """A one-image numpy array with ``layout`` (from :func:`_single`) to a new RGB image."""
    if layout.startswith("B"):
        arr = arr[0]
    return _hwc_to_rgb(arr, name)


def _tensor_to_rgb(t: Any, layout: str, name: str) -> Image.Image:
    """A one-image torch tensor with ``layout`` (from :func:`_single`) to a new RGB image."""
    import torch

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


def _u16_to_u8(data: np.ndarray) -> np.ndarray:
    """Scale 0..65535 to 0..255 with rounding (65535 -> 255, 257 -> 1)."""
    return ((data.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _float_to_u8(data: np.ndarray, name: str) -> np.ndarray:
    """Float in [0, 1] (within FLOAT_TOLERANCE) to uint8, refusing other ranges with a hint."""
    _check_float_range(data, name)
    return np.rint(np.clip(data.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def _check_float_range(data: np.ndarray, name: str) -> None:
    """Refuse NaN/inf and float values outside [0, 1] (within FLOAT_TOLERANCE), hinting at the likely range."""
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
