"""A synthetic MR-FIQA set with known degradation levels, drawn for the tiny face pack (tests, benchmarks).

:func:`write_level_set` writes identity folders like ``feval fiqa synth`` does, with the same manifest
(``identity``, ``ref``, ``levels``, ``severity``) and the same post-processing (:func:`~feval_core.fiqa.synth.
apply_degradations`); pose is drawn rather than prompted: a yaw level narrows the face (a turned head shows a narrower
face between the same eyes-to-mouth height). :class:`FacePaintingPipeline` wraps a real diffusers pipeline and paints
a tiny-pack face (identity = the generator's seed, narrowed by the prompt's yaw phrase) over its output, so that
``synthesize`` with the tiny random pipeline writes faces the tiny pack detects.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from PIL import Image

from ..fiqa.synth import FACTORS, MANIFEST_NAME, YAW_PHRASES, apply_degradations, draw_levels, severity
from .facepack import draw_tiny_face

CANVAS = 128


def _drawn_face(identity: int, yaw: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    side = int(rng.integers(52, 64))
    width = max(12, int(round(side * (1 - 0.16 * yaw))))
    cx, cy = CANVAS // 2 + int(rng.integers(-6, 7)), CANVAS // 2 + int(rng.integers(-6, 7))
    box = (cx - width // 2, cy - side // 2, cx - width // 2 + width, cy - side // 2 + side)
    return draw_tiny_face(np.full((CANVAS, CANVAS, 3), 20, np.uint8), box, seed=identity), box


def write_level_set(root: str | Path, identities: int = 30, per_identity: int = 8, *, first_identity: int = 0,
                    seed: int = 0, max_factors: int = 3) -> Path:
    """Write ``root/id_<k>/<n>.png`` (image 0 of each identity clean, the reference) and ``root/manifest.jsonl``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(first_identity, first_identity + identities):
        folder = root / f"id_{k:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_identity):
            levels = {} if n == 0 else draw_levels(rng, FACTORS, max_factors)
            image, box = _drawn_face(k, levels.get("yaw", 0), rng)
            post = {f: v for f, v in levels.items() if f != "yaw"}
            path = folder / f"{n:03d}.png"
            Image.fromarray(apply_degradations(image, post, rng, face_box=box)).save(path)
            full = {f: levels.get(f, 0) for f in FACTORS}
            rows.append({"image": str(path.relative_to(root)), "identity": folder.name, "ref": n == 0,
                         "levels": full, "severity": round(severity(full), 4)})
    manifest = root / MANIFEST_NAME
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest


class FacePaintingPipeline:
    """``pipe(prompt, generator=..., output_type="pil", ...)`` of a real diffusers pipeline, its image enlarged to
    128 px with a tiny-pack face painted in (identity = the generator's seed; narrower for a yaw phrase)."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.device = getattr(pipe, "device", "cpu")
        self.calls = 0

    def __call__(self, prompt: str, generator: Any = None, **kwargs: Any) -> Any:
        seed = int(generator.initial_seed())
        image = self.pipe(prompt, generator=generator, **kwargs).images[0]
        self.calls += 1
        base = (np.asarray(image.convert("RGB").resize((CANVAS, CANVAS))) // 4).astype(np.uint8)  # dark backdrop
        yaw = max((i for i, p in enumerate(YAW_PHRASES) if prompt.endswith(p)), default=0)
        width = int(56 * (1 - 0.16 * yaw))
        box = (64 - width // 2, 36, 64 - width // 2 + width, 92)
        return SimpleNamespace(images=[Image.fromarray(draw_tiny_face(base, box, seed=seed))])
