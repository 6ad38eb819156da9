"""Torch-only preprocessing: an image tensor with gradients -> the backbone's ``pixel_values``.

:func:`pixel_values_from_tensors` does what the VLM's (PIL) image processor does to a picture, with
torch ops only, so a score computed from its output can be differentiated with respect to the pixels:

* **resize** with the processor's filter, antialiased like PIL (``bicubic``/``bilinear``), rows then
  columns, clamping to [0, 1] after each pass as PIL clips its 8-bit passes (8-bit rounding itself is
  left out: it has no gradient);
* **rescale + normalize** with the processor's mean/std;
* **layout**: Qwen2-VL / Qwen2.5-VL ``smart_resize`` + patchify (temporal copies, spatial-merge order,
  ``image_grid_thw``); InternVL (GotOcr2 processor) fixed size, with its tiling when ``crop_to_patches``;
  CLIP/SigLIP-style (LLaVA) shortest-edge resize + centre crop, or a fixed ``height x width``.

The result matches the processor's ``pixel_values`` on the same 8-bit image to about 1e-2 (PIL rounds each
pass to 8 bits: mean difference ~4e-3, largest ~2 levels, i.e. ~3e-2 after normalisation).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = ["pixel_values_from_tensors", "supports_processor"]

# PIL resampling codes -> torch interpolate modes (PIL: 0 NEAREST, 1 LANCZOS, 2 BILINEAR, 3 BICUBIC, 4 BOX, 5 HAMMING)
_RESAMPLE_MODES = {0: "nearest", 2: "bilinear", 3: "bicubic"}
_warned: set[str] = set()



# ---------------------------------------------------------------------------------------------------
# pixel values


def supports_processor(image_processor: Any) -> bool:
    """True when :func:`pixel_values_from_tensors` can reproduce this image processor."""
    try:
        _layout_of(image_processor)
    except NotImplementedError:
        return False
    return True


def pixel_values_from_tensors(image_processor: Any, images: torch.Tensor | Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The processor's model inputs for ``images`` (``[B,3,H,W]`` or a list of ``[3,H,W]``, float in [0, 1]).

    Returns ``{"pixel_values": ...}`` plus ``"image_grid_thw"`` for Qwen2-VL-style processors, in the
    processor's layout and order (images one after the other). Gradients flow to ``images``.
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W] in [0, 1], got shape {list(images.shape)}; "
                             "permute channels-last tensors with .permute(0, 3, 1, 2)")
        images = list(images.unbind(0))
    for i, img in enumerate(images):
        if img.ndim != 3 or img.shape[0] != 3:
            raise ValueError(f"image {i} must be [3, H, W] in [0, 1], got shape {list(img.shape)}")
        if not img.is_floating_point():
            raise ValueError(f"image {i} has dtype {img.dtype}; pass float pixels in [0, 1] (e.g. t.float() / 255)")
    layout = _layout_of(image_processor)
    if layout == "qwen2_vl":
        return _qwen2_vl(image_processor, images)
    if layout == "got_ocr2":
        return {"pixel_values": torch.cat([_got_ocr2(image_processor, img) for img in images])}
    return {"pixel_values": torch.stack([_clip_like(image_processor, img) for img in images])}


def _layout_of(ip: Any) -> str:
    name = type(ip).__name__
    if all(hasattr(ip, a) for a in ("patch_size", "merge_size", "temporal_patch_size")) and "Qwen" in name:
        return "qwen2_vl"
    if name.startswith("GotOcr2ImageProcessor"):
        return "got_ocr2"
    if getattr(ip, "do_pad", False) or getattr(ip, "image_grid_pinpoints", None):
        raise NotImplementedError(f"{name} pads or tiles images (any-resolution); differentiable preprocessing "
                                  "supports Qwen2-VL, InternVL (GotOcr2) and CLIP/SigLIP-style processors")
    size = _size(ip, "size")
    if size.get("shortest_edge") or (size.get("height") and size.get("width")):
        return "clip_like"
    raise NotImplementedError(f"{name} with size={size} is not supported by differentiable preprocessing; "
                              "supported: Qwen2-VL, InternVL (GotOcr2) and CLIP/SigLIP-style processors")


def _size(ip: Any, attr: str) -> dict[str, int]:
    size = getattr(ip, attr, None)
    if size is None:
        return {}
    if isinstance(size, dict):
        return {k: v for k, v in size.items() if v is not None}
    keys = ("height", "width", "shortest_edge", "longest_edge", "max_height", "max_width")
    return {k: getattr(size, k) for k in keys if getattr(size, k, None) is not None}


def _mode(ip: Any) -> str:
    resample = getattr(ip, "resample", 3)
    code = int(getattr(resample, "value", resample) if resample is not None else 2)
    if code not in _RESAMPLE_MODES:
        key = f"{type(ip).__name__}:{code}"
        if key not in _warned:
            _warned.add(key)
            logger.warning("%s resamples with PIL filter %d; the differentiable path approximates it with "
                           "antialiased bicubic", type(ip).__name__, code)
        return "bicubic"
    return _RESAMPLE_MODES[code]


def _resize(img: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """``[3,H,W]`` -> ``[3,height,width]`` like PIL's ``Image.resize`` (antialiased when shrinking, clipped)."""
    if (img.shape[-2], img.shape[-1]) == (height, width):
        return img
    x = img.unsqueeze(0)
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if mode == "nearest":
        return F.interpolate(x, size=(height, width), mode="nearest-exact").squeeze(0).to(img.dtype)
    # PIL resamples rows first, then columns, clipping the 8-bit intermediate: do the same
    if x.shape[-1] != width:
        x = F.interpolate(x, size=(x.shape[-2], width), mode=mode, align_corners=False, antialias=True).clamp(0.0, 1.0)
    if x.shape[-2] != height:
        x = F.interpolate(x, size=(height, width), mode=mode, align_corners=False, antialias=True).clamp(0.0, 1.0)
    return x.squeeze(0).to(img.dtype)


def _normalize(ip: Any, img: torch.Tensor) -> torch.Tensor:
    # inputs are already in [0, 1]: the processor's 1/255 rescale of 8-bit pixels is implied
    if getattr(ip, "do_rescale", True) is False:
        img = img * 255.0
    elif getattr(ip, "rescale_factor", 1 / 255) not in (None, 1 / 255):
        img = img * 255.0 * float(ip.rescale_factor)
    if getattr(ip, "do_normalize", True):
        mean = torch.as_tensor(_triple(ip.image_mean), dtype=img.dtype, device=img.device).view(3, 1, 1)
        std = torch.as_tensor(_triple(ip.image_std), dtype=img.dtype, device=img.device).view(3, 1, 1)
        img = (img - mean) / std
    return img


def _triple(v: Any) -> list[float]:
    v = [float(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
    return v * 3 if len(v) == 1 else v


def _qwen2_vl(ip: Any, images: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    size = _size(ip, "size")
    lo = size.get("shortest_edge", getattr(ip, "min_pixels", None))
    hi = size.get("longest_edge", getattr(ip, "max_pixels", None))
    p, m, t = int(ip.patch_size), int(ip.merge_size), int(ip.temporal_patch_size)
    mode = _mode(ip)
    patches, grids = [], []
    for img in images:
        h, w = int(img.shape[-2]), int(img.shape[-1])
        th, tw = smart_resize(h, w, factor=p * m, min_pixels=lo, max_pixels=hi)
        x = _normalize(ip, _resize(img, th, tw, mode))
        gh, gw = th // p, tw // p
        c = x.shape[0]
        x = x.reshape(c, gh // m, m, p, gw // m, m, p).permute(1, 4, 2, 5, 0, 3, 6)  # (gh', gw', mh, mw, C, ph, pw)
        x = x.unsqueeze(5).expand(*x.shape[:5], t, p, p)  # one frame repeated over the temporal patch
        patches.append(x.reshape(gh * gw, c * t * p * p))
        grids.append([1, gh, gw])
    return {"pixel_values": torch.cat(patches), "image_grid_thw": torch.tensor(grids, dtype=torch.long)}


def _got_ocr2(ip: Any, img: torch.Tensor) -> torch.Tensor:
    """``[num_tiles, 3, h, w]``: one resized image, or InternVL's tiles plus a thumbnail."""
    size = _size(ip, "size")
    ph, pw = int(size["height"]), int(size["width"])
    mode = _mode(ip)
    max_patches = int(getattr(ip, "max_patches", 1) or 1)
    if not (getattr(ip, "crop_to_patches", False) and max_patches > 1):
        return _normalize(ip, _resize(img, ph, pw, mode)).unsqueeze(0)
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
        get_optimal_tiled_canvas,
    )

    h, w = int(img.shape[-2]), int(img.shape[-1])
    cols, rows = get_optimal_tiled_canvas((h, w), (ph, pw), int(getattr(ip, "min_patches", 1)), max_patches)
    big = _resize(img, ph * rows, pw * cols, mode)
    tiles = [big[:, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] for r in range(rows) for c in range(cols)]
    if len(tiles) > 1:
        tiles.append(_resize(img, ph, pw, mode))
    return torch.stack([_normalize(ip, t) for t in tiles])


def _clip_like(ip: Any, img: torch.Tensor) -> torch.Tensor:
    size = _size(ip, "size")
    mode = _mode(ip)
    h, w = int(img.shape[-2]), int(img.shape[-1])
    if getattr(ip, "do_resize", True):
        if size.get("shortest_edge"):
            short, long = (w, h) if w <= h else (h, w)
            new_short = int(size["shortest_edge"])
            new_long = int(new_short * long / short)
            th, tw = (new_long, new_short) if w <= h else (new_short, new_long)
        else:
            th, tw = int(size["height"]), int(size["width"])
        img = _resize(img, th, tw, mode)
    if getattr(ip, "do_center_crop", False):
        crop = _size(ip, "crop_size")
        ch, cw = int(crop["height"]), int(crop["width"])
        h, w = int(img.shape[-2]), int(img.shape[-1])
        if ch > h or cw > w:
            raise NotImplementedError(f"centre crop {ch}x{cw} is larger than the resized image {h}x{w}")
        top, left = (h - ch) // 2, (w - cw) // 2
        img = img[:, top:top + ch, left:left + cw]
    return _normalize(ip, img)
