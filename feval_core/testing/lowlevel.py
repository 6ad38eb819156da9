"""A synthetic opinion-score set where quality and authenticity are low-level cues, several at once.

Each image is a simple portrait: a centred skin-toned oval (the "face") with eyes, brows, mouth, striped hair, a
striped collar and fine skin texture, on a soft near-grey background with fine grain. Five independent
degradations, each with a strength in 0..1, are applied in the order a generator and a pipeline would:

* **over-smoothing** (authenticity): the "plastic skin" of generated faces: edge-preserving smoothing of the
  face (the texture goes, the edges stay) and an even, airbrushed, slightly glossy skin tone;
* **over-saturation** (authenticity): colours pushed away from grey (saturation x1 .. x2.6);
* **blur** (quality): Gaussian blur of the whole image (sigma up to 2.2 px);
* **noise** (quality): Gaussian noise (std up to 30 levels);
* **JPEG blocking** (quality): JPEG at quality 92 (none) .. 4 (strong blocking).

The MOS are ``quality = 100 - 45 blur - 35 noise - 20 jpeg`` and ``authenticity = 100 - 50 smooth - 50 saturate``,
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
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFilter

from ..data.manifest import ManifestRow, write_manifest

if TYPE_CHECKING:  # pragma: no cover
    from ..train.config import TrainConfig

logger = logging.getLogger(__name__)

FACTORS = ("smooth", "saturate", "blur", "noise", "jpeg")
MAX_BLUR = 2.2
MAX_NOISE = 30.0
JPEG_QUALITY = (92, 4)
SHEEN = 28.0
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
        return {"quality": 100.0 - 45.0 * self.blur - 35.0 * self.noise - 20.0 * self.jpeg,
                "authenticity": 100.0 - 50.0 * self.smooth - 50.0 * self.saturate}


def _scene(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A clean portrait (float RGB 0..255): a centred face with eyes, brows, mouth, striped hair and a striped
    collar on a soft background, fine grain everywhere and stronger skin texture on the face; and the mask of the
    face oval. The layout barely moves, so sharp details sit at about the same place in every image."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(90, 150) + rng.uniform(-12, 12, size=3)  # near grey: saturation is a cue
    img = base + (yy[..., None] - 0.5) * rng.uniform(-30, 30) + np.zeros(3)
    img = img + rng.normal(0, 5.0, size=(size, size, 1))  # fine grain of the background
    cy, cx = 0.47 + rng.uniform(-0.015, 0.015), 0.5 + rng.uniform(-0.015, 0.015)
    ry, rx = 0.32, 0.23
    face = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    skin = rng.uniform(150, 190) + np.array([22.0, 0.0, -14.0]) + rng.uniform(-6, 6, size=3)
    img[face] = (skin + rng.normal(0, 16.0, size=(size, size, 1)))[face]
    stripes = (np.floor(xx * size / 2) % 2)[..., None]  # 2-pixel strands
    hair = (yy < cy - ry * 0.5) & (((yy - cy) / (ry * 1.1)) ** 2 + ((xx - cx) / (rx * 1.15)) ** 2 <= 1.0)
    img[hair] = (np.array([40.0, 30.0, 25.0]) + 70.0 * stripes)[hair]
    collar = yy > 0.86
    img[collar] = (np.array([200.0, 200.0, 205.0]) - 150.0 * (np.floor(yy * size / 2) % 2)[..., None])[collar]
    for dx in (-0.09, 0.09):
        eye = ((yy - cy + 0.06) ** 2 + (xx - cx - dx) ** 2) <= 0.028 ** 2
        img[eye] = (30, 25, 22)
        brow = (np.abs(yy - cy + 0.12) < 0.01) & (np.abs(xx - cx - dx) < 0.05)
        img[brow] = (45, 35, 30)
    mouth = (np.abs(yy - cy - 0.16) < 0.012) & (np.abs(xx - cx) < 0.08)
    img[mouth] = (125, 45, 50)
    return np.clip(img, 0, 255), face


def _saturate(img: np.ndarray, amount: float) -> np.ndarray:
    grey = img.mean(axis=2, keepdims=True)
    return np.clip(grey + (img - grey) * (1.0 + (MAX_SATURATION - 1.0) * amount), 0, 255)


def _smooth(img: np.ndarray, face: np.ndarray, amount: float) -> np.ndarray:
    """"Plastic skin": edge-preserving smoothing of the face and an airbrushed, even, brighter tone, blended in
    by ``amount``."""
    import cv2

    flat = np.clip(img, 0, 255).round().astype(np.uint8)
    for _ in range(3):
        flat = cv2.bilateralFilter(flat, d=9, sigmaColor=60, sigmaSpace=6)
    waxy = flat.astype(np.float64)
    tone = waxy[face].mean(axis=0)
    waxy[face] = 0.5 * waxy[face] + 0.5 * tone + np.array([SHEEN, SHEEN, SHEEN * 0.8])
    out = img.copy()
    out[face] = (1.0 - amount) * img[face] + amount * waxy[face]
    return np.clip(out, 0, 255)


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


@dataclass(frozen=True)
class LowLevelTask:
    """Files of a prepared low-level task: data folder (``train.jsonl``, ``val.jsonl``), backbone, face-pack root."""

    data: Path
    base: Path
    face_root: Path


def prepare_lowlevel_task(root: str | Path, *, n_train: int = 3000, n_val: int = 200, seed: int = 1) -> LowLevelTask:
    """Write the data, a tiny Qwen2.5-VL backbone (wide random init, as the synthetic task's) and the tiny face
    pack (these portraits show no face it detects: every row gets the learned "no face" tokens)."""
    from .facepack import write_tiny_face_pack
    from .tiny import build_tiny_backbone

    root = Path(root)
    make_lowlevel_manifest(root / "data", n_train, seed=seed, name="train.jsonl")
    make_lowlevel_manifest(root / "data", n_val, seed=seed + 1, name="val.jsonl")
    base = build_tiny_backbone("qwen2_5_vl", root / "backbone", init_std=0.2)
    write_tiny_face_pack(root / "face_pack")
    return LowLevelTask(root / "data", base, root / "face_pack")


def lowlevel_train_config(task: LowLevelTask, out: str | Path, **overrides: object) -> TrainConfig:
    """A :class:`~feval_core.train.config.TrainConfig` with **default** training settings: only the files, the face
    pack and the image size (the set's 112 px) are given."""
    from ..train.config import TrainConfig
    from .facepack import TINY_PACK_NAME

    kw: dict[str, object] = dict(
        manifest=str(task.data / "train.jsonl"), val_manifest=str(task.data / "val.jsonl"), base=str(task.base),
        out=str(out), face_pack=TINY_PACK_NAME, face_root=str(task.face_root), det_size=128,
        max_image_pixels=112 * 112, progress=False)
    kw.update(overrides)
    return TrainConfig(**kw)
