"""Scores drawn onto copies of the images, for ComfyUI's image preview.

The caption is measured before it is drawn: its parts ("Q 64.9", ..., "no face", "(0-100)") wrap onto as many
lines as needed, at the largest font size (up to a sixteenth of the shorter side) whose lines all fit the width
and whose band stays in the lower part of the image, so that no label is cut off at any size from 64 px up.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from feval_core import DIMENSIONS

from .images import to_uint8
from .scores import FEvalScores, fmt

SHORT = {"quality": "Q", "authenticity": "A", "identity": "ID", "correspondence": "C"}
RANGE_LABEL = "(0-100)"
NO_FACE_LABEL = "no face"
MIN_SIZE = 6  # smallest font size tried (px)
MAX_BAND = 0.5  # the caption's band covers at most this share of the image height
SEPARATOR = "  "

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


@functools.lru_cache(maxsize=64)
def font(size: int) -> Font:
    """Pillow's default font at ``size`` px (a fixed bitmap font where Pillow has no FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def text_width(text: str, size: int) -> int:
    """Width in px of ``text`` drawn at x = 0 (to the right edge of its ink)."""
    return int(math.ceil(font(size).getbbox(text)[2]))


@dataclass
class Caption:
    """Where a caption goes: ``lines`` at font ``size``, left edge ``x``, first line's top ``y``, ``step`` px apart,
    on a band from ``band_top`` to the bottom of the image."""

    size: int
    lines: list[str]
    x: int
    y: int
    step: int
    band_top: int


def caption_parts(scores: FEvalScores, i: int) -> list[str]:
    """The labels of image ``i``: one per asked dimension, "no face" when none was found, and the range."""
    parts = [f"{SHORT[d]} {fmt(float(scores.values[i, j]))}" for j, d in enumerate(DIMENSIONS) if d in scores.dims]
    if scores.faces[i] == 0:
        parts.append(NO_FACE_LABEL)
    return [*parts, RANGE_LABEL]


def _wrap(parts: list[str], size: int, room: int) -> list[str] | None:
    """``parts`` joined into lines no wider than ``room`` px; None when one part alone is wider."""
    lines: list[str] = []
    for part in parts:
        if text_width(part, size) > room:
            return None
        if lines and text_width(lines[-1] + SEPARATOR + part, size) <= room:
            lines[-1] += SEPARATOR + part
        else:
            lines.append(part)
    return lines


def layout(parts: list[str], width: int, height: int) -> Caption:
    """The largest caption of ``parts`` that fits a ``width`` x ``height`` image (see the module docstring).

    Below about 64 px nothing may fit; the smallest size is used then, and the text may be clipped.
    """
    start = max(MIN_SIZE, min(width, height) // 16)
    for size in range(start, MIN_SIZE - 1, -1):
        margin = max(2, size // 3)
        step = int(math.ceil(size * 1.25))
        lines = _wrap(parts, size, width - 2 * margin)
        band = len(lines) * step + 2 * margin if lines else height + 1
        if band <= max(MAX_BAND * height, step + 2 * margin) and band <= height:
            return Caption(size, lines, margin, height - band + margin, step, height - band)
    size = MIN_SIZE
    step = int(math.ceil(size * 1.25))
    return Caption(size, [SEPARATOR.join(parts)], 1, max(0, height - step - 1), step, max(0, height - step - 2))


def annotate(images: torch.Tensor, scores: FEvalScores) -> torch.Tensor:
    """An RGB copy of ``images`` ([B, H, W, C] in [0, 1]) with each image's scores along its bottom edge."""
    out = []
    for i, rgb in enumerate(to_uint8(images)):
        pil = Image.fromarray(rgb)
        w, h = pil.size
        cap = layout(caption_parts(scores, i), w, h)
        draw = ImageDraw.Draw(pil, "RGBA")
        draw.rectangle([0, cap.band_top, w, h], fill=(0, 0, 0, 170))
        for k, line in enumerate(cap.lines):
            draw.text((cap.x, cap.y + k * cap.step), line, fill=(255, 255, 255, 255), font=font(cap.size))
        out.append(torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0))
    return torch.stack(out).to(images.device)
