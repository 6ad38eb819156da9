"""Scores drawn onto copies of the images, for ComfyUI's image preview."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from feval_core import DIMENSIONS

from .images import to_uint8
from .scores import FEvalScores, fmt

SHORT = {"quality": "Q", "authenticity": "A", "identity": "ID", "correspondence": "C"}


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def annotate(images: torch.Tensor, scores: FEvalScores) -> torch.Tensor:
    """An RGB copy of ``images`` ([B, H, W, C] in [0, 1]) with each image's scores along its bottom edge."""
    out = []
    for i, rgb in enumerate(to_uint8(images)):
        pil = Image.fromarray(rgb)
        w, h = pil.size
        size = max(8, min(w, h) // 16)
        font = _font(size)
        parts = [f"{SHORT[d]} {fmt(float(scores.values[i, j]))}"
                 for j, d in enumerate(DIMENSIONS) if d in scores.dims]
        if scores.faces[i] == 0:
            parts.append("no face")
        text = "  ".join(parts) + "  (0-100)"
        draw = ImageDraw.Draw(pil, "RGBA")
        band = int(math.ceil(size * 1.6))
        draw.rectangle([0, h - band, w, h], fill=(0, 0, 0, 170))
        draw.text((max(2, size // 3), h - band + (band - size) // 2), text, fill=(255, 255, 255, 255), font=font)
        out.append(torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0))
    return torch.stack(out).to(images.device)
