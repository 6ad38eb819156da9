"""A synthetic opinion-score set where quality and authenticity are low-level cues, several at once.

Each image is a portrait-like scene: a skin-toned oval (the "face") with fine skin texture, on a background of
smooth colour gradients, sharp-edged shapes and fine grain. Five independent degradations, each with a
strength in 0..1, are applied in the order a generator and a pipeline would:

* **over-smoothing** (authenticity): edge-preserving smoothing of the face, the "plastic skin" of generated faces
  (the texture goes, the edges stay);
* **over-saturation** (authenticity): colours pushed away from grey (saturation x1 .. x2.6);
* **blur** (quality): Gaussian blur of the whole image (sigma up to 2.2 px);
* **noise** (quality): Gaussian noise (std up to 22 levels);
* **JPEG blocking** (quality): JPEG at quality 92 (none) .. 8 (strong blocking).

The MOS are ``quality = 100 - 36 blur - 32 noise - 32 jpeg`` and ``authenticity = 100 - 50 smooth - 50 saturate``,
plus a small rating noise. Blur also removes texture, so authenticity cannot be read off "how much fine detail"
alone: smoothing keeps edges sharp and hits the face only. The set is built at run time; the same seed gives the
same files.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ..data.manifest import ManifestRow, write_manifest

logger = logging.getLogger(__name__)

FACTORS = ("smooth", "saturate", "blur", "noise", "jpeg")
MAX_BLUR = 2.2
MAX_NOISE = 22.0
JPEG_QUALITY = (92, 8)
MAX_SATURATION = 2.6


@dataclass(frozen=True)
class LowLevelFactors:
    """Strengths (0..1) of the five degradations of one image."""

    smooth: float
    saturate: float
    blur: float
    noise: float
    jpeg: float

    def mos(self) -> dict[str, float]:
        """The noiseless MOS (0..100)."""
        return {"quality": 100.0 - 36.0 * self.blur - 32.0 * self.noise - 32.0 * self.jpeg,
                "authenticity": 100.0 - 50.0 * self.smooth - 50.0 * self.saturate}


def _scene(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A clean scene (float RGB 0..255) and the mask of its face oval."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(60, 190) + rng.uniform(-25, 25, size=3)  # colours near grey: saturation is a cue
    slope = rng.uniform(-40, 40, size=(2, 1)) + rng.uniform(-10, 10, size=(2, 3))
    img = base + yy[..., None] * slope[0] + xx[..., None] * slope[1]
    for _ in range(int(rng.integers(2, 5))):  # sharp-edged shapes
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.06, 0.18)
        mask = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r * rng.uniform(0.5, 1.5))
        img[mask] = rng.uniform(30, 220) + rng.uniform(-35, 35, size=3)
    img += rng.normal(0, 9.0, size=(size, size, 1))  # fine grain of the background
    cy, cx = rng.uniform(0.42, 0.58), rng.uniform(0.4, 0.6)
    ry, rx = rng.uniform(0.26, 0.32), rng.uniform(0.19, 0.24)
    face = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    skin = rng.uniform(150, 200) + np.array([25.0, 0.0, -15.0]) + rng.uniform(-8, 8, size=3)
    pores = rng.normal(0, 14.0, size=(size, size, 1)) + rng.normal(0, 6.0, size=(size, size, 3))
    img[face] = (skin + pores)[face]
    for dy, dx in ((-0.08, -0.08), (-0.08, 0.08)):  # eyes: small dark discs with sharp edges
        eye = ((yy - cy - dy * 1.2) ** 2 + (xx - cx - dx) ** 2) <= (0.028) ** 2
        img[eye] = (30, 25, 20)
    mouth = (np.abs(yy - cy - 0.14) < 0.012) & (np.abs(xx - cx) < 0.07)
    img[mouth] = (120, 40, 45)
    return np.clip(img, 0, 255), face


def _saturate(img: np.ndarray, amount: float) -> np.ndarray:
    grey = img.mean(axis=2, keepdims=True)
    return np.clip(grey + (img - grey) * (1.0 + (MAX_SATURATION - 1.0) * amount), 0, 255)


def _smooth(img: np.ndarray, face: np.ndarray, amount: float) -> np.ndarray:
    """Edge-preserving smoothing of the face region, blended in by ``amount``."""
    import cv2

    u8 = np.clip(img, 0, 255).round().astype(np.uint8)
    flat = cv2.bilateralFilter(u8, d=7, sigmaColor=40, sigmaSpace=5).astype(np.float64)
    flat = cv2.bilateralFilter(np.clip(flat, 0, 255).astype(np.uint8), d=7, sigmaColor=40, sigmaSpace=5)
    out = img.copy()
    out[face] = (1.0 - amount) * img[face] + amount * flat.astype(np.float64)[face]
    return out


def render(f: LowLevelFactors, size: int, rng: np.random.Generator) -> Image.Image:
    """One degraded image (scene and noise from ``rng``)."""
    img, face = _scene(size, rng)
    img = _smooth(img, face, f.smooth)
    img = _saturate(img, f.saturate)
    pil = Image.fromarray(img.round().astype(np.uint8))
    if f.blur > 0:
        pil = pil.filter(ImageFilter.GaussianBlur(MAX_BLUR * f.blur))
    arr = np.asarray(pil, dtype=np.float64) + rng.normal(0, MAX_NOISE * f.noise, size=img.shape)
    pil = Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8))
    quality = round(JPEG_QUALITY[0] + (JPEG_QUALITY[1] - JPEG_QUALITY[0]) * f.jpeg)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def make_lowlevel_manifest(out_dir: str | Path, n: int, *, seed: int = 0, size: int = 112, rating_noise: float = 2.0,
                           name: str = "manifest.jsonl") -> Path:
    """Write ``n`` images (PNG, after their JPEG round trip) and a manifest with quality and authenticity MOS."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows: list[ManifestRow] = []
    factors = []
    for i in range(n):
        f = LowLevelFactors(*(float(v) for v in rng.uniform(0.0, 1.0, size=len(FACTORS))))
        path = out / "images" / f"{seed}_{i:05d}.png"
        render(f, size, rng).save(path)
        mos = {d: float(np.clip(v + rng.normal(0.0, rating_noise), 0.0, 100.0)) for d, v in f.mos().items()}
        rows.append(ManifestRow(image=path, task="generation", mos=mos, model="lowlevel", line=i + 1))
        factors.append({"image": path.name, **asdict(f)})
    manifest = out / name
    write_manifest(rows, manifest)
    (out / (Path(name).stem + "_factors.jsonl")).write_text("".join(json.dumps(r) + "\n" for r in factors),
                                                            encoding="utf-8")
    logger.info("wrote %d low-level synthetic images (size %d) to %s", n, size, out)
    return manifest
