"""Sections of the GPU suite beyond scoring throughput.

* :func:`reward_vision_ratio` — the differentiable reward (forward + backward) with the vision tower once per
  image vs once per (image, dimension) row, side by side;
* :func:`detect_workers_ratio` — face detection + ArcFace with 1 and 2 prefetch workers (real-size pack);
* :func:`run_extra` — the hook for scorers that other rooms add. A room that wants its scorer in the suite gives
  a module ``feval_core.<room>.benchmark`` (or, when it builds its models with the suite's builders and the
  ``testing`` room, one here in ``benchmarks/speed/``) with ``gpu_section(device: str, budget_s: float, dry_run:
  bool) -> dict`` (JSON-able figures; a ``"table"`` entry, if any, is printed) and, optionally, ``estimate_s(dry_run)
  -> float`` (its cost, so that the suite skips it when the budget does not fit). :data:`EXTRA_SECTIONS` names
  them; until the module exists the section is recorded as ``"not built yet"``.
"""

from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("feval.bench")

EXTRA_SECTIONS = {
    "fiqa": "feval_core.fiqa.benchmark",  # face image quality for recognition (ViT-FIQA): utility img/s
    "video": "benchmarks.speed.video",  # face video quality (FVQ-Rater): clips/s, frames/s
}


def _load_tensors(paths: list[str], device: str) -> torch.Tensor:
    from PIL import Image

    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0 for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reward_vision_ratio(scorer: Any, paths: list[str], ref: str, device: str, repeats: int = 2) -> dict[str, Any]:
    """Seconds per forward + backward of ``DifferentiableReward`` on ``paths`` (all four dimensions, faces held
    fixed), with the vision tower once per image and once per row, interleaved; best of ``repeats`` each."""
    from feval_core.dimensions import DIMENSIONS
    from feval_core.model.batching import PassStats
    from reward import DifferentiableReward

    reward = DifferentiableReward(scorer, {d: 1.0 for d in DIMENSIONS})
    images = _load_tensors(paths, device)
    faces = reward.detect_faces(images)
    prompt = "a photo of a smiling woman with red hair, studio light, 85mm"
    best: dict[str, float] = {}
    runs: dict[str, int] = {}
    for r in range(repeats + 1):  # the first round warms up
        for label, per_image in (("vision once per image", True), ("vision once per row", False)):
            reward.tensor_scorer.vision_per_image = per_image
            x = images.clone().requires_grad_(True)
            scorer.model.stats = stats = PassStats()
            _sync(device)
            t0 = time.perf_counter()
            try:
                reward(x, prompt, refs=ref, faces=faces).sum().backward()
                _sync(device)
            finally:
                scorer.model.stats = None
            if r > 0:
                best[label] = min(best.get(label, float("inf")), time.perf_counter() - t0)
            runs[label] = stats.images
    reward.tensor_scorer.vision_per_image = True
    shared, per_row = best["vision once per image"], best["vision once per row"]
    return {"images": len(paths), "image_px": images.shape[-1], "seconds": best, "vision_runs": runs,
            "ratio": per_row / shared}


def detect_workers_ratio(count: int, size: int, det_size: int, scale: float, work: Path, rounds: int = 1
                         ) -> dict[str, Any]:
    """Face detection + ArcFace img/s with 1 vs 2 prefetch workers (``benchmarks/detect_workers.py``)."""
    from benchmarks.detect_workers import OLD, ONE, TWO, face_images, run
    from feval_core.testing.facepack_sized import SIZED_PACK_NAME, write_sized_face_pack

    root = work / "faces-detect"
    write_sized_face_pack(root, scale=scale)
    results = run(face_images(count, size), SIZED_PACK_NAME, root, det_size, rounds)
    return {"images": count, "image_px": size, "det_size": det_size, "pack_scale": scale, "results": results,
            "ratio": results[TWO]["img_per_s"] / results[ONE]["img_per_s"],
            "ratio_vs_old_lock": results[TWO]["img_per_s"] / results[OLD]["img_per_s"]}


def extra_module(name: str) -> Any:
    """The hook module of extra section ``name``, or None while it is not built."""
    path = EXTRA_SECTIONS[name]
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as err:
        if err.name and path.startswith(err.name):
            return None
        raise


def extra_estimate_s(name: str, dry_run: bool) -> float:
    """What extra section ``name`` says it costs (0 when it does not say, or is not built)."""
    estimate = getattr(extra_module(name), "estimate_s", None)
    return float(estimate(dry_run)) if estimate is not None else 0.0


def run_extra(name: str, device: str, budget_s: float, dry_run: bool) -> dict[str, Any]:
    """The section of an extra scorer (see the module doc), or why it has none yet."""
    path = EXTRA_SECTIONS[name]
    module = extra_module(name)
    if module is None:
        return {"status": "not built yet", "hook": f"{path}.gpu_section(device, budget_s, dry_run)"}
    section = getattr(module, "gpu_section", None)
    if section is None:
        return {"status": f"{path} has no gpu_section(device, budget_s, dry_run)"}
    return {"status": "measured", **section(device=device, budget_s=budget_s, dry_run=dry_run)}
