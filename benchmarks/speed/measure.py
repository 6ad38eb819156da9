"""Measurements: the matmul peak, the fast path through ``FEvalScorer.iter_scores``, the CPU side alone, the naive
path (one image, one dimension, one fp32 forward at a time) and one ablation per speed feature."""

from __future__ import annotations

import copy
import resource
import time
from typing import Any

import torch

from .backbones import PROMPT


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, dtype: torch.dtype) -> float:
    """Best FLOP/s of large square matmuls in ``dtype`` on ``device``, measured now."""
    sizes = [4096, 8192, 16384] if device.startswith("cuda") else [512, 1024]
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        out = torch.empty(n, n, device=device, dtype=dtype)
        for _ in range(3):
            torch.matmul(a, b, out=out)
        sync(device)
        iters = max(3, int(2e13 / (2 * n ** 3))) if device.startswith("cuda") else 5
        t0 = time.perf_counter()
        for _ in range(iters):
            torch.matmul(a, b, out=out)
        sync(device)
        best = max(best, 2 * n ** 3 * iters / (time.perf_counter() - t0))
        del a, b, out
    return best


def peak_memory_reset(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux: KiB; process peak RSS


def warm_faces(scorer: Any, paths: list[str], workers: int) -> None:
    """Load every worker's copy of the face sessions before timing: ``workers`` threads detect at the same moment
    (the copies are otherwise loaded inside the first timed run, ~1 s each for a real-size pack)."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from feval_core.inputs.images import load_image, pad_to_aspect

    enc = scorer.face_encoder
    workers = max(1, workers)
    if enc is None or not paths:
        return
    if hasattr(enc, "allow_sessions"):
        enc.allow_sessions(workers)
    images = [pad_to_aspect(load_image(paths[i % len(paths)])) for i in range(workers)]
    start = Barrier(workers)

    def one(image: Any) -> None:
        start.wait()
        enc.analyze(image)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, images))


def measure_fast(scorer: Any, paths: list[str], ref: str, batch: int, device: str) -> dict[str, Any]:
    """Images/s of 4-dimension scoring through ``iter_scores``, and the work it did."""
    from feval_core.model.batching import PassStats

    stats = PassStats()
    scorer.model.stats = stats
    for _ in scorer.iter_scores(paths[:batch], PROMPT, ref, batch_size=batch):  # warm-up: kernels, caches
        pass
    sync(device)
    stats.reset()
    peak_memory_reset(device)
    t0 = time.perf_counter()
    scored = 0
    for part in scorer.iter_scores(paths, PROMPT, ref, batch_size=batch):
        scored += len(part)
    sync(device)
    elapsed = time.perf_counter() - t0
    scorer.model.stats = None
    pf = scorer.last_prefetch
    return {"images": scored, "seconds": elapsed, "img_per_s": scored / elapsed, "stats": copy.copy(stats),
            "cpu_wait": pf.wait_s / elapsed if pf else 0.0, "peak_mem_gib": peak_memory_gib(device)}


def measure_prep(scorer: Any, paths: list[str], batch: int) -> float:
    """Images/s of the CPU side alone (decode, face detection, image processor) with the scorer's workers."""
    from feval_core.inputs.images import load_image, pad_to_aspect
    from feval_core.inputs.prefetch import ObjectPool, Prefetcher, chunked

    pool = ObjectPool(lambda: copy.deepcopy(scorer.model.processor))

    def prepare(path: str, processor: Any) -> int:
        image = pad_to_aspect(load_image(path))
        scorer.face_encoder.analyze(image)
        scorer.model.prepare_image(image, processor)
        return 1

    t0 = time.perf_counter()
    n = sum(len(c) for c in Prefetcher(chunked(paths, batch), prepare, workers=scorer.workers,
                                       make_state=pool.acquire, release_state=pool.release))
    return n / (time.perf_counter() - t0)


def measure_naive(scorer: Any, paths: list[str], ref: str, device: str) -> float:
    """Images/s scoring one image, one dimension, one forward at a time (model already in fp32)."""
    from feval_core.dimensions import DIMENSIONS
    from feval_core.inputs.images import load_image, pad_to_aspect
    from feval_core.model.rows import Row

    model, faces = scorer.model, scorer.face_encoder
    ref_img = pad_to_aspect(load_image(ref))
    ref_face = faces.analyze(ref_img).embedding

    def one(path: str) -> None:
        img = pad_to_aspect(load_image(path))
        face = faces.analyze(img).embedding
        for d in DIMENSIONS:
            row = Row(img, d, prompt=PROMPT if d == "correspondence" else None,
                      ref=ref_img if d == "identity" else None, face=face, ref_face=ref_face)
            model.scores(model(model.collate([row]).to(device))).cpu()

    with torch.inference_mode():
        one(paths[0])  # warm-up
        sync(device)
        t0 = time.perf_counter()
        for p in paths[1:]:
            one(p)
        sync(device)
    return (len(paths) - 1) / (time.perf_counter() - t0)


def measure_ablations(scorer: Any, paths: list[str], ref: str, batch: int, device: str) -> dict[str, float]:
    """Images/s with one speed-up switched off at a time (each gain measured against the full fast path)."""
    from feval_core.model.vision_attention import (
        batch_window_attention,
        restore_window_attention,
    )

    out = {"fast path": measure_fast(scorer, paths, ref, batch, device)["img_per_s"]}
    for label, attr, off in (("no vision sharing", "share_vision", False), ("no length buckets", "bucket", False),
                             ("no prefetch threads", "workers", 0)):
        before = getattr(scorer, attr)
        setattr(scorer, attr, off)
        try:
            out[label] = measure_fast(scorer, paths, ref, batch, device)["img_per_s"]
        finally:
            setattr(scorer, attr, before)
    scorer.model.rows_by_expert = False
    try:
        out["experts by PEFT row indexing"] = measure_fast(scorer, paths, ref, batch, device)["img_per_s"]
    finally:
        scorer.model.rows_by_expert = True
    if restore_window_attention(scorer.model.backbone):
        try:
            out["vision attention per window"] = measure_fast(scorer, paths, ref, batch, device)["img_per_s"]
        finally:
            batch_window_attention(scorer.model.backbone)
    return out


def per_run(n_images: int, batch: int) -> int:
    """Images timed at one batch size: ``n_images`` (at most 8 batches, at least 3), whole batches."""
    return max(3 * batch, min(n_images, 8 * batch)) // batch * batch
