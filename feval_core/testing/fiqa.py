"""Tiny ViT-FIQA models and a synthetic identity set, built offline (tests, the EDC benchmark, ``make-tiny --fiqa``).

:func:`write_identity_set` draws faces of many identities that the tiny face pack tells apart
(:func:`~feval_core.testing.facepack.draw_tiny_face`: identity = seed), one folder per identity, each image with
at most one degradation of random strength. Some make the tiny recognizer fail (blur, occlusion by a bright patch,
a dark band across the face, blending in another identity's pattern); some do not (mild noise, a dimmed face, which
only lowers the detector's confidence). Which image carries what is written to ``degradations.jsonl``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from .facepack import draw_tiny_face, write_tiny_face_pack

logger = logging.getLogger(__name__)

TINY_FIQA_NOTICE = ("tiny random-weight ViT-FIQA model for tests and smoke runs: its utility scores are MEANINGLESS. "
                    "Train one with `feval fiqa train`.")
TINY_SHAPES: dict[str, Any] = {"embed_dim": 32, "depth": 2, "num_heads": 2, "num_features": 64}
"""arcface_torch ViT shapes (112 px, patch 9: 144 patch tokens) at tiny width and depth."""
CANVAS = 128
DEGRADATIONS = ("clean", "blur", "occlusion", "dark_band", "blend", "noise", "dim")
_WEIGHTS = (0.6, 0.07, 0.07, 0.06, 0.07, 0.06, 0.07)
"""Share of each degradation: with 60% clean faces the FNMR at FMR 1e-3 starts near 20%, low enough that discarding
30% can remove the errors (with 43%, as an earlier 34%-clean mix gave, even a perfect quality reached only 0.75x
random at 30%)."""


@dataclass
class IdentitySet:
    root: Path
    identities: int
    images: int


def _face(seed: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    side = int(rng.integers(44, 66))
    x, y = (int(v) for v in rng.integers(20, CANVAS - side - 20 + 1, size=2))
    box = (x, y, x + side, y + side)
    return draw_tiny_face(np.full((CANVAS, CANVAS, 3), 20, np.uint8), box, seed=seed), box


def degrade(image: np.ndarray, box: tuple[int, int, int, int], kind: str, strength: float,
            rng: np.random.Generator, other: int) -> np.ndarray:
    """``image`` with one degradation of ``strength`` in [0, 1] applied to the face in ``box``."""
    x1, y1, x2, y2 = box
    side = x2 - x1
    out = image.copy()
    if kind == "blur":
        return np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(1 + 7 * strength)))
    if kind == "occlusion":
        w = max(1, int(side * (0.1 + 0.7 * strength)))
        left = x1 + int(rng.integers(0, side - w + 1))
        out[y1:y2, left:left + w] = rng.integers(150, 256, size=3)
    elif kind == "dark_band":
        h = max(1, int(side * (0.04 + 0.22 * strength)))
        top = y1 + int(rng.integers(side // 4, side - h - side // 8))
        out[top:top + h, x1:x2] = 15
    elif kind == "blend":
        twin = draw_tiny_face(np.full_like(image, 20), box, seed=other)
        a = 0.1 + 0.5 * strength
        out = (out * (1 - a) + twin * a).round().astype(np.uint8)
    elif kind == "noise":
        out = np.clip(out + rng.normal(0, 10 + 40 * strength, out.shape), 0, 255).astype(np.uint8)
    elif kind == "dim":
        out = (out * (0.85 - 0.3 * strength)).astype(np.uint8)
    return out


def write_identity_set(root: str | Path, identities: int = 40, per_identity: int = 10, *, first_identity: int = 0,
                       seed: int = 0) -> IdentitySet:
    """Write ``root/id_<k>/<n>.png`` for identities ``first_identity ..`` (tiny-pack faces) and
    ``degradations.jsonl``; the first image of each identity is clean."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    records = []
    for k in range(first_identity, first_identity + identities):
        folder = root / f"id_{k:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_identity):
            image, box = _face(k, rng)
            kind = DEGRADATIONS[int(rng.choice(len(DEGRADATIONS), p=_WEIGHTS))] if n else "clean"
            strength = float(rng.uniform())
            other = int(rng.integers(0, 1_000_000)) + 10_000  # a stranger's pattern for "blend"
            image = degrade(image, box, kind, strength, rng, other)
            path = folder / f"{n:03d}.png"
            Image.fromarray(image).save(path)
            records.append({"image": str(path.relative_to(root)), "identity": k, "degradation": kind,
                            "strength": round(strength, 4)})
    with (root / "degradations.jsonl").open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    return IdentitySet(root, identities, len(records))


def make_tiny_fiqa(out: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny random-weight ViT-FIQA model with its tiny face pack (``face_pack/``) and sample images."""
    import torch

    from ..fiqa.config import FIQAConfig
    from ..fiqa.labels import quantile_table
    from ..fiqa.vit import ViTFIQA, crops_to_tensor
    from ..model.config import FaceEncoderConfig
    from .tiny import write_samples

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_tiny_face_pack(out / "face_pack", seed=seed)
    config = FIQAConfig(**TINY_SHAPES, face=FaceEncoderConfig(pack="tiny_face", root="face_pack", det_size=128),
                        source=f"random init (feval make-tiny --fiqa, seed {seed})")
    torch.manual_seed(seed)
    model = ViTFIQA(config).eval()
    from ..faces.encoder import FaceEncoder

    encoder = FaceEncoder("tiny_face", root=out / "face_pack", det_size=(128, 128))
    rng = np.random.default_rng(seed)
    crops = np.stack([encoder.analyze(_face(s, rng)[0]).crop for s in range(64)])
    with torch.no_grad():  # a random head whose output varies with the face, calibrated on aligned drawn faces
        for p in model.quality_head.parameters():
            p.normal_(0, 1.0)
        raw = model(crops_to_tensor(crops))[1]
    config.utility_quantiles = quantile_table(raw.numpy())
    model.save_pretrained(out)
    write_samples(out / "samples", seed=seed)
    (out / "README.md").write_text(f"# tiny ViT-FIQA model\n\n{TINY_FIQA_NOTICE}\n", encoding="utf-8")
    logger.warning(TINY_FIQA_NOTICE)
    return out
