"""``feval fiqa synth``: a FIQA training set from the user's own diffusers pipeline, with degradations at known
levels (after MR-FIQA's SynFIQA, seed 003).

Each identity is one seed: its reference image is the prompt with a frontal-pose phrase at that seed, and its other
images are the same seed with a pose phrase (yaw through the prompt) and post-processing at known levels: Gaussian
blur, downsampling, noise, JPEG and occlusion patches. ``OUT/<identity>/<n>.png`` is an identity-folder set that
``feval fiqa train`` reads; ``OUT/manifest.jsonl`` has per image ``identity``, ``ref``, ``levels`` and ``severity``
(the mean of level / max level over all factors) for ``feval fiqa label``.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from ..errors import ConfigError

logger = logging.getLogger(__name__)

MAX_LEVEL = 4
POST_FACTORS = ("blur", "downsample", "noise", "jpeg", "occlusion")
FACTORS = ("yaw",) + POST_FACTORS
YAW_PHRASES = ("frontal view, looking at the camera", "head slightly turned to the side",
               "head turned to the side, three-quarter view", "head turned far to the side, half profile",
               "side profile view")
"""The prompt phrase of each yaw level 0..4 (pose is set through the prompt: the pipeline draws it)."""
JPEG_QUALITY = (95, 40, 20, 10, 5)
MANIFEST_NAME = "manifest.jsonl"
SYNTH_CONFIG_NAME = "synth_config.json"


def severity(levels: dict[str, int]) -> float:
    """Ground-truth severity of a synthetic image: mean of level / max level over all factors (0 = clean)."""
    return float(np.mean([levels.get(f, 0) / MAX_LEVEL for f in FACTORS]))


def apply_degradations(image: np.ndarray, levels: dict[str, int], rng: np.random.Generator,
                       face_box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """``image`` (RGB uint8) with the post-processing factors at ``levels`` (0..4; 0 or absent = not applied), in a
    fixed order: occlusion, blur, downsampling, noise, JPEG. Occlusion patches fall inside ``face_box`` (default: the
    central half of the image, where a portrait's face is)."""
    for name, level in levels.items():
        if name not in FACTORS or not isinstance(level, int) or not 0 <= level <= MAX_LEVEL:
            raise ValueError(f"levels must map {FACTORS} to integers 0..{MAX_LEVEL}, got {name}={level!r}")
    out = np.asarray(image, np.uint8).copy()
    h, w = out.shape[:2]
    side = min(h, w)
    if levels.get("occlusion"):
        x1, y1, x2, y2 = face_box or (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
        frac = 0.15 + 0.15 * levels["occlusion"]  # share of the face box's side the patch covers
        pw, ph = max(1, int((x2 - x1) * frac)), max(1, int((y2 - y1) * frac * 1.5))
        px = x1 + int(rng.integers(0, max(1, x2 - x1 - pw + 1)))
        py = y1 + int(rng.integers(0, max(1, y2 - y1 - ph + 1)))
        out[py:py + ph, px:px + pw] = rng.integers(150, 256, size=3)
    if levels.get("blur"):
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(side * 0.012 * levels["blur"])))
    if levels.get("downsample"):
        small = max(4, int(round(side / (1.6 ** levels["downsample"]))))
        scale = small / side
        low = Image.fromarray(out).resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.BILINEAR)
        out = np.asarray(low.resize((w, h), Image.BILINEAR))
    if levels.get("noise"):
        out = np.clip(out + rng.normal(0, 6 * levels["noise"], out.shape), 0, 255).astype(np.uint8)
    if levels.get("jpeg"):
        buf = io.BytesIO()
        Image.fromarray(out).save(buf, format="JPEG", quality=JPEG_QUALITY[levels["jpeg"]])
        out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return out


def draw_levels(rng: np.random.Generator, factors: Sequence[str] = FACTORS, max_factors: int = 3) -> dict[str, int]:
    """Random levels for a degraded image: 1..``max_factors`` of ``factors`` at levels 1..4, the others 0."""
    k = int(rng.integers(1, min(max_factors, len(factors)) + 1))
    chosen = rng.choice(len(factors), size=k, replace=False)
    return {factors[i]: int(rng.integers(1, MAX_LEVEL + 1)) for i in sorted(chosen)}


@dataclass
class SynthConfig:
    """``synth_config.json``: how a synthetic set was made (every field is a ``feval fiqa synth`` option)."""

    prompt: str = field(default="a close-up portrait photo of a person, detailed face",
                        metadata={"help": "the base prompt; each image adds its pose phrase"})
    identities: int = field(default=100, metadata={"help": "identities (one seed each)"})
    per_identity: int = field(default=10, metadata={"help": "images per identity, the clean reference included"})
    seed: int = field(default=0, metadata={"help": "identity k uses seed + k"})
    factors: list[str] = field(default_factory=lambda: list(FACTORS), metadata={"help": "degradations drawn"})
    max_factors: int = field(default=3, metadata={"help": "at most this many degradations per image"})
    steps: int = field(default=30, metadata={"help": "num_inference_steps of the pipeline"})
    guidance_scale: float = 5.0
    negative_prompt: str | None = None
    pipeline: str = field(default="", metadata={"help": "the pipeline it came from (free text)"})

    def __post_init__(self) -> None:
        bad = sorted(set(self.factors) - set(FACTORS))
        if bad or not self.factors:
            raise ConfigError(f"factors must be a non-empty subset of {', '.join(FACTORS)}; unknown: {bad}")
        for name in ("identities", "per_identity", "max_factors", "steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.identities < 2:
            raise ConfigError("identities must be >= 2: training and EDC need at least two people")


def _generate(pipe: Callable[..., Any], cfg: SynthConfig, seed: int, yaw: int) -> np.ndarray:
    import torch

    kwargs: dict[str, Any] = {"num_inference_steps": cfg.steps, "guidance_scale": cfg.guidance_scale}
    if cfg.negative_prompt:
        kwargs["negative_prompt"] = cfg.negative_prompt
    device = getattr(pipe, "device", "cpu")
    generator = torch.Generator(device=str(device)).manual_seed(seed)
    image = pipe(f"{cfg.prompt}, {YAW_PHRASES[yaw]}", generator=generator, output_type="pil", **kwargs).images[0]
    return np.asarray(image.convert("RGB"))


def synthesize(pipe: Callable[..., Any], out: str | Path, cfg: SynthConfig,
               progress: Callable[[int], None] | None = None) -> Path:
    """Write ``cfg.identities`` x ``cfg.per_identity`` images with ``pipe`` (a diffusers text-to-image pipeline, or
    anything called like one) into ``out``; returns the manifest's path. Re-running skips images already written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / SYNTH_CONFIG_NAME).write_text(json.dumps(asdict(cfg), indent=2) + "\n", encoding="utf-8")
    rows = []
    for k in range(cfg.identities):
        seed = cfg.seed + k
        rng = np.random.default_rng([cfg.seed, k])
        folder = out / f"id_{k:05d}"
        folder.mkdir(exist_ok=True)
        bases: dict[int, np.ndarray] = {}
        for n in range(cfg.per_identity):
            levels = {} if n == 0 else draw_levels(rng, cfg.factors, cfg.max_factors)
            path = folder / f"{n:03d}.png"
            noise_rng = np.random.default_rng([cfg.seed, k, n])
            if not path.is_file():
                yaw = levels.get("yaw", 0)
                if yaw not in bases:
                    bases[yaw] = _generate(pipe, cfg, seed, yaw)
                post = {f: v for f, v in levels.items() if f != "yaw"}
                Image.fromarray(apply_degradations(bases[yaw], post, noise_rng)).save(path)
            full = {f: levels.get(f, 0) for f in FACTORS}
            rows.append({"image": str(path.relative_to(out)), "identity": folder.name, "ref": n == 0,
                         "levels": full, "severity": round(severity(full), 4), "seed": seed})
            if progress is not None:
                progress(1)
    manifest = out / MANIFEST_NAME
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    logger.info("wrote %d images of %d identities to %s", len(rows), cfg.identities, out)
    return manifest


def load_pipeline(path: str, device: str | None = None, dtype: str | None = None) -> Any:
    """A diffusers pipeline from a local folder or hub id (``DiffusionPipeline.from_pretrained``, safetensors only)."""
    import torch

    try:
        from diffusers import DiffusionPipeline
    except ImportError as exc:
        raise ConfigError("feval fiqa synth needs diffusers: pip install \"feval[reward]\"") from exc
    kwargs: dict[str, Any] = {"use_safetensors": True}
    if dtype:
        kwargs["torch_dtype"] = getattr(torch, dtype)
    pipe = DiffusionPipeline.from_pretrained(path, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
