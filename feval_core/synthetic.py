"""A synthetic opinion-score data set whose MOS are known functions of visible content (for training tests).

Every image is a dark scene with a face drawn for the tiny insightface pack (a light 4x4 colour grid, see
:mod:`feval_core.facepack`) and a coloured disc or square. Independent hidden factors make the four MOS:

* **quality** = ``100 - 70 * noise - 30 * (no face)``: Gaussian noise (std up to ``MAX_NOISE``) over the
  whole image, and a face image that shows no face at all;
* **authenticity** = ``100 * (1 - |cast|)``: a colour cast that warms (``cast > 0``) or cools (``cast < 0``)
  the background; both directions are penalised, so the MOS is not monotonic in any colour channel (face
  and shape keep their colours, so identity and correspondence stay readable);
* **identity** = ``100 * (1 - w)``: the face is a blend of the reference identity (weight ``1 - w``) and
  another identity; no face at all scores 0;
* **correspondence** = ``100 - 100/3 * d``: ``d`` is the distance (0..3) on a six-hue colour wheel between
  the colour the prompt names ("a face next to a red disc") and the colour drawn.

A small rating noise (std ``rating_noise``) is added to each MOS, as human ratings would. The factors are
chosen to be visible to a tiny random-weight backbone (a frozen random vision tower normalises away
brightness and blur but keeps hue and noise); a real backbone sees far more. Images are generated at run
time (nothing is committed); the same seed gives the same files.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .manifest import ManifestRow, write_manifest

logger = logging.getLogger(__name__)

HUES: tuple[str, ...] = ("red", "yellow", "green", "cyan", "blue", "magenta")
"""Shape colours around a colour wheel; neighbours are one step apart."""
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (160, 25, 25), "yellow": (125, 125, 15), "green": (25, 140, 25),
    "cyan": (15, 120, 125), "blue": (35, 45, 190), "magenta": (130, 20, 130)}
"""Each has mean RGB < 96, so the tiny face detector never takes a shape for a face."""
SHAPES: tuple[str, ...] = ("disc", "square")
MAX_NOISE = 70.0
MAX_CAST = 70.0
_GRID = 4
_FACE_COLORS = (170, 256)


def hue_distance(a: str, b: str) -> int:
    """Steps between two colours on the :data:`HUES` wheel (0..3)."""
    d = abs(HUES.index(a) - HUES.index(b))
    return min(d, len(HUES) - d)


@dataclass(frozen=True)
class SyntheticFactors:
    """The hidden factors of one synthetic image (``noise``, ``blend`` in 0..1; ``cast`` in -1..1)."""

    noise: float
    cast: float
    face: bool
    ref_id: int
    other_id: int
    blend: float
    color: str
    shape: str
    prompt_color: str

    def mos(self) -> dict[str, float]:
        """The noiseless MOS of each dimension (0..100)."""
        return {
            "quality": 100.0 - 70.0 * self.noise - 30.0 * (not self.face),
            "authenticity": 100.0 * (1.0 - abs(self.cast)),
            "identity": 100.0 * (1.0 - self.blend) if self.face else 0.0,
            "correspondence": 100.0 - 100.0 / 3.0 * hue_distance(self.color, self.prompt_color),
        }

    @property
    def prompt(self) -> str:
        return f"a face next to a {self.prompt_color} {self.shape}"


def face_colors(identity: int) -> np.ndarray:
    """The ``4 x 4 x 3`` light colour grid of an identity (float, 170..255)."""
    rng = np.random.default_rng(10_000 + identity)
    return rng.integers(*_FACE_COLORS, size=(_GRID, _GRID, 3)).astype(np.float64)


def _paint_face(img: np.ndarray, box: tuple[int, int, int, int], colors: np.ndarray) -> None:
    x1, y1, x2, y2 = box
    rows = ((np.arange(y1, y2) - y1) * _GRID) // (y2 - y1)
    cols = ((np.arange(x1, x2) - x1) * _GRID) // (x2 - x1)
    img[y1:y2, x1:x2] = colors[rows][:, cols]


def _paint_shape(img: np.ndarray, shape: str, color: str, center: tuple[int, int], radius: int) -> None:
    cy, cx = center
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    if shape == "disc":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    else:
        mask = (np.abs(yy - cy) <= radius * 0.8) & (np.abs(xx - cx) <= radius * 0.8)
    img[mask] = COLORS[color]


def render(f: SyntheticFactors, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw one synthetic image from its factors (layout jitter and pixel noise come from ``rng``)."""
    img = np.empty((size, size, 3), dtype=np.float64)
    img[:] = rng.uniform(15, 40) + rng.uniform(-4, 4, size=3)  # dark, nearly grey background
    img += np.array([MAX_CAST * f.cast, 0.0, -MAX_CAST * f.cast])  # the background's colour cast
    radius = round(size * rng.uniform(0.15, 0.19))
    cx = int(size - radius - rng.integers(1, 4))
    cy = int(rng.integers(radius + 1, size - radius - 1))
    _paint_shape(img, f.shape, f.color, (cy, cx), radius)
    side = round(size * rng.uniform(0.38, 0.46))
    if f.face:
        x1 = int(rng.integers(1, max(2, size // 2 - side // 2)))
        y1 = int(rng.integers(1, size - side - 1))
        colors = (1.0 - f.blend) * face_colors(f.ref_id) + f.blend * face_colors(f.other_id)
        _paint_face(img, (x1, y1, x1 + side, y1 + side), colors)
    img += rng.normal(0.0, MAX_NOISE * f.noise, size=img.shape)
    return Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8))


def render_reference(identity: int, size: int) -> Image.Image:
    """A clean reference portrait of an identity: its face alone on a dark background."""
    img = np.full((size, size, 3), 25.0)
    side = round(size * 0.45)
    x1 = (size - side) // 2
    _paint_face(img, (x1, x1, x1 + side, x1 + side), face_colors(identity))
    return Image.fromarray(img.astype(np.uint8))


def sample_factors(rng: np.random.Generator, identities: int, *, face_prob: float = 0.85,
                   noise_range: tuple[float, float] = (0.0, 1.0), match_prob: float = 0.4) -> SyntheticFactors:
    """Draw independent factors; ``noise_range`` bounds the noise (a 'generator' of some quality)."""
    ref_id = int(rng.integers(identities))
    other = int(rng.integers(identities - 1))
    color = str(rng.choice(HUES))
    prompt_color = color if rng.random() < match_prob else str(rng.choice([c for c in HUES if c != color]))
    return SyntheticFactors(
        noise=float(rng.uniform(*noise_range)), cast=float(rng.uniform(-1.0, 1.0)),
        face=bool(rng.random() < face_prob), ref_id=ref_id, other_id=other + (other >= ref_id),
        blend=float(rng.uniform(0.0, 1.0)), color=color, shape=str(rng.choice(SHAPES)), prompt_color=prompt_color)


def make_synthetic_manifest(
    out_dir: str | Path,
    n: int,
    *,
    seed: int = 0,
    size: int = 56,
    identities: int = 6,
    rating_noise: float = 2.0,
    generators: dict[str, tuple[float, float]] | None = None,
    name: str = "manifest.jsonl",
) -> Path:
    """Write ``n`` synthetic images, the reference faces and a manifest under ``out_dir``; returns the manifest.

    ``generators`` maps a generator name to the noise range of its images (its quality); images are dealt to
    generators in turn and recorded as their ``model``. Every row is a customization with all four MOS.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if identities < 2:
        raise ValueError(f"identities must be >= 2 (identity compares a face with other faces), got {identities}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "refs").mkdir(parents=True, exist_ok=True)
    for k in range(identities):
        ref = out / "refs" / f"id{k}.png"
        if not ref.exists():
            render_reference(k, size).save(ref)
    gens = list((generators or {"synthetic": (0.0, 1.0)}).items())
    rng = np.random.default_rng(seed)
    rows: list[ManifestRow] = []
    factors: list[dict[str, object]] = []
    for i in range(n):
        gen, q_range = gens[i % len(gens)]
        f = sample_factors(rng, identities, noise_range=q_range)
        path = out / "images" / f"{seed}_{i:05d}.png"
        render(f, size, rng).save(path)
        mos = {d: float(min(100.0, max(0.0, v + rng.normal(0.0, rating_noise)))) for d, v in f.mos().items()}
        rows.append(ManifestRow(image=path, task="customization", mos=mos, prompt=f.prompt,
                                ref=out / "refs" / f"id{f.ref_id}.png", model=gen, line=i + 1))
        factors.append({"image": path.name, **f.__dict__})
    manifest = out / name
    write_manifest(rows, manifest)
    (out / (Path(name).stem + "_factors.jsonl")).write_text(
        "".join(json.dumps(r) + "\n" for r in factors), encoding="utf-8")
    logger.info("wrote %d synthetic images (size %d, %d identities) to %s", n, size, identities, out)
    return manifest
