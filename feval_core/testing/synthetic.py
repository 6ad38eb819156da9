"""A synthetic opinion-score data set whose MOS are known functions of visible content (for training tests).

Every image is a dark scene with a face drawn for the tiny insightface pack (a light 4x4 colour grid, see
:mod:`feval_core.testing.facepack`) and a coloured disc or square. Independent hidden factors make the four MOS:

* **quality** = ``100 - 70 * noise - 30 * (no face)``: Gaussian noise (std up to ``MAX_NOISE``) over the
  whole image, and a face image that shows no face at all;
* **authenticity** = ``100 * (1 - |cast|)``: a colour cast that warms (``cast > 0``) or cools (``cast < 0``)
  the scene around the face; both directions are penalised, so the MOS is not monotonic in any colour
  channel (the face keeps its colours, as a colour-robust face encoder would see it);
* **identity** = ``100 * (1 - w)``: the face is a blend of the reference identity (weight ``1 - w``) and
  another identity; an image without a face scores 0 (the scorer leaves identity NaN there: it needs a face);
* **correspondence** = ``100 * (share of the named person in the face)``: the prompt names a person ("a
  portrait of Ada next to a red disc"), either the reference identity (``1 - w``) or the other one in the
  blend (``w``); an image without a face scores 0.

A small rating noise (std ``rating_noise``) is added to each MOS, as human ratings would. The factors are
chosen to be learnable by a tiny random-weight backbone in minutes of CPU training: its frozen random vision
tower normalises brightness and blur away but keeps hue and strong noise, and it could not learn to bind a
colour word in the prompt to a shape's hue in that time; a name binds to the face tokens, which the trained
facial projector shapes. A real backbone sees far more. Images are generated at run time (nothing is
committed); the same seed gives the same files.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..data.manifest import ManifestRow, write_manifest

if TYPE_CHECKING:  # pragma: no cover
    from ..train.config import TrainConfig

logger = logging.getLogger(__name__)

COLORS: dict[str, tuple[int, int, int]] = {"red": (150, 25, 25), "green": (25, 130, 25), "blue": (30, 40, 160)}
"""Shape colours; with any cast their mean RGB stays < 96, so the tiny face detector never takes a shape for
a face."""
NAMES: tuple[str, ...] = ("Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana")
"""The name a prompt gives each identity (identity ``k`` is ``NAMES[k]``)."""
SHAPES: tuple[str, ...] = ("disc", "square")
MAX_NOISE = 80.0
MAX_CAST = 110.0
_GRID = 4
_FACE_COLORS = (170, 256)


@dataclass(frozen=True)
class SyntheticFactors:
    """The hidden factors of one synthetic image (``noise``, ``blend`` in 0..1; ``cast`` in -1..1)."""

    noise: float
    cast: float
    face: bool
    ref_id: int
    other_id: int
    blend: float
    named: int
    color: str
    shape: str

    def mos(self) -> dict[str, float]:
        """The noiseless MOS of each dimension (0..100)."""
        return {
            "quality": 100.0 - 70.0 * self.noise - 30.0 * (not self.face),
            "authenticity": 100.0 * (1.0 - abs(self.cast)),
            "identity": 100.0 * (1.0 - self.blend) if self.face else 0.0,
            "correspondence": self.share(self.named),
        }

    def share(self, identity: int) -> float:
        """How much of ``identity`` the face shows (0..100; 0 without a face)."""
        if not self.face:
            return 0.0
        return 100.0 * ((1.0 - self.blend) * (identity == self.ref_id) + self.blend * (identity == self.other_id))

    def prompt_naming(self, identity: int) -> str:
        return f"a portrait of {NAMES[identity]} next to a {self.color} {self.shape}"

    @property
    def prompt(self) -> str:
        return self.prompt_naming(self.named)


def face_colors(identity: int) -> np.ndarray:
    """The ``4 x 4 x 3`` light colour grid of an identity (float, 170..255)."""
    rng = np.random.default_rng(10_000 + identity)
    return rng.integers(*_FACE_COLORS, size=(_GRID, _GRID, 3)).astype(np.float64)


def _paint_face(img: np.ndarray, box: tuple[int, int, int, int], colors: np.ndarray) -> None:
    x1, y1, x2, y2 = box
    rows = ((np.arange(y1, y2) - y1) * _GRID) // (y2 - y1)
    cols = ((np.arange(x1, x2) - x1) * _GRID) // (x2 - x1)
    img[y1:y2, x1:x2] = colors[rows][:, cols]


def _paint_shape(img: np.ndarray, shape: str, rgb: np.ndarray, center: tuple[int, int], radius: int) -> None:
    cy, cx = center
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    if shape == "disc":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    else:
        mask = (np.abs(yy - cy) <= radius * 0.8) & (np.abs(xx - cx) <= radius * 0.8)
    img[mask] = rgb


def render(f: SyntheticFactors, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw one synthetic image from its factors (layout jitter and pixel noise come from ``rng``)."""
    img = np.empty((size, size, 3), dtype=np.float64)
    img[:] = rng.uniform(15, 40) + rng.uniform(-4, 4, size=3)  # dark, nearly grey background
    radius = round(size * rng.uniform(0.15, 0.19))
    cx = int(size - radius - rng.integers(1, 4))
    cy = int(rng.integers(radius + 1, size - radius - 1))
    _paint_shape(img, f.shape, np.array(COLORS[f.color], float), (cy, cx), radius)
    img += np.array([MAX_CAST * f.cast, 0.0, -MAX_CAST * f.cast])  # the scene's colour cast
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


def sample_factors(rng: np.random.Generator, identities: int, *, face_prob: float = 0.9,
                   noise_range: tuple[float, float] = (0.0, 1.0)) -> SyntheticFactors:
    """Draw independent factors; ``noise_range`` bounds the noise (a 'generator' of some quality)."""
    ref_id = int(rng.integers(identities))
    other = int(rng.integers(identities - 1))
    other_id = other + (other >= ref_id)
    return SyntheticFactors(
        noise=float(rng.uniform(*noise_range)), cast=float(rng.uniform(-1.0, 1.0)),
        face=bool(rng.random() < face_prob), ref_id=ref_id, other_id=other_id, blend=float(rng.uniform(0.0, 1.0)),
        named=ref_id if rng.random() < 0.5 else other_id, color=str(rng.choice(list(COLORS))),
        shape=str(rng.choice(SHAPES)))


def make_synthetic_manifest(
    out_dir: str | Path,
    n: int,
    *,
    seed: int = 0,
    size: int = 56,
    identities: int = 6,
    rating_noise: float = 2.0,
    generators: dict[str, tuple[float, float]] | None = None,
    counterfactuals: bool = False,
    name: str = "manifest.jsonl",
) -> Path:
    """Write ``n`` synthetic images, the reference faces and a manifest under ``out_dir``; returns the manifest.

    ``generators`` maps a generator name to the noise range of its images (its quality); images are dealt to
    generators in turn and recorded as their ``model``. Every row is a customization with all four MOS.
    ``counterfactuals`` adds a second row per image that names the *other* person of the face blend and uses
    the *other* reference: the same pixels with opposite identity and correspondence scores, so only the
    prompt and the reference can explain them.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 2 <= identities <= len(NAMES):
        raise ValueError(f"identities must be in 2..{len(NAMES)} (identity compares a face with other faces), "
                         f"got {identities}")
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
                                ref=out / "refs" / f"id{f.ref_id}.png", model=gen, line=len(rows) + 1))
        if counterfactuals:
            named = f.other_id if f.named == f.ref_id else f.ref_id
            swapped = {"identity": f.share(f.other_id), "correspondence": f.share(named)}
            mos2 = {d: float(min(100.0, max(0.0, v + rng.normal(0.0, rating_noise)))) for d, v in swapped.items()}
            rows.append(ManifestRow(image=path, task="customization", mos=mos2, prompt=f.prompt_naming(named),
                                    ref=out / "refs" / f"id{f.other_id}.png", model=gen, line=len(rows) + 1))
        factors.append({"image": path.name, **f.__dict__})
    manifest = out / name
    write_manifest(rows, manifest)
    (out / (Path(name).stem + "_factors.jsonl")).write_text(
        "".join(json.dumps(r) + "\n" for r in factors), encoding="utf-8")
    logger.info("wrote %d synthetic images (size %d, %d identities) to %s", n, size, identities, out)
    return manifest


# -- the learning recipe -----------------------------------------------------------------------------------
SYNTHETIC_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
"""LoRA on every linear layer of the tiny LLM (attention and FFN): the tiny task needs the capacity."""


@dataclass(frozen=True)
class SyntheticTask:
    """Files of a prepared synthetic training task: data folder (``train.jsonl``, ``val.jsonl``), backbone,
    insightface root holding the tiny face pack."""

    data: Path
    base: Path
    face_root: Path


def prepare_synthetic_task(root: str | Path, *, n_train: int = 1000, n_val: int = 200, identities: int = 4,
                           seed: int = 1) -> SyntheticTask:
    """Write the synthetic data, a tiny Qwen2.5-VL backbone (wide random init) and the tiny face pack."""
    from .facepack import write_tiny_face_pack
    from .tiny import build_tiny_backbone

    root = Path(root)
    make_synthetic_manifest(root / "data", n_train, seed=seed, identities=identities, name="train.jsonl")
    make_synthetic_manifest(root / "data", n_val, seed=seed + 1, identities=identities, name="val.jsonl")
    base = build_tiny_backbone("qwen2_5_vl", root / "backbone", init_std=0.2)
    face_root = root / "face_pack"
    write_tiny_face_pack(face_root)
    return SyntheticTask(root / "data", base, face_root)


def synthetic_train_config(task: SyntheticTask, out: str | Path, **overrides: object) -> TrainConfig:
    """The :class:`~feval_core.train.config.TrainConfig` that learns the synthetic task in minutes on a CPU: its own
    recipe (the low-level task of :mod:`~feval_core.testing.lowlevel` is the one trained with default settings);
    rating words and a frozen vision tower, as it was designed with (0.82-0.94 SRCC per dimension)."""
    from ..train.config import TrainConfig
    from .facepack import TINY_PACK_NAME

    kw: dict[str, object] = dict(
        manifest=str(task.data / "train.jsonl"), val_manifest=str(task.data / "val.jsonl"), base=str(task.base),
        out=str(out), face_pack=TINY_PACK_NAME, face_root=str(task.face_root), det_size=128,
        max_image_pixels=56 * 56, num_face_tokens=4, lora_rank=16, lora_alpha=32, lora_targets=SYNTHETIC_LORA_TARGETS,
        batch_size=64, epochs=5, lr=4e-3, head_lr=1.5e-3, eval_every=10_000, progress=False, log_every=10,
        schedule="levels", vision_experts="none")
    kw.update(overrides)
    return TrainConfig(**kw)
