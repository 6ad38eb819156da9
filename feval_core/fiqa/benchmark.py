"""The ViT-FIQA section of the GPU suite (``benchmarks/gpu_suite.py``, hook ``gpu_section``).

Times the model on aligned 112x112 crops at arcface_torch's ``vit_b`` size (random weights: timing does not depend on
them), side by side at several batch sizes: crops/s, peak GPU memory. Face detection and alignment are not included
(they are timed by the suite's face-detection section). ``dry_run`` runs a tiny ViT on the CPU, so the code cannot rot.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from .config import FIQAConfig
from .vit import ViTFIQA

REAL = FIQAConfig.preset("vit_b")
TINY = FIQAConfig(embed_dim=32, depth=2, num_heads=2, num_features=32)


def _time(model: ViTFIQA, batch: int, device: torch.device, dtype: torch.dtype, repeats: int) -> float:
    pixels = torch.randn(batch, 3, 112, 112, device=device, dtype=dtype)
    with torch.inference_mode():
        model(pixels)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            model(pixels)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return batch * repeats / (time.perf_counter() - start)


def gpu_section(device: str, budget_s: float, dry_run: bool) -> dict[str, Any]:
    """Crops/s of ViT-FIQA (``vit_b``; a tiny ViT when ``dry_run``) at batch sizes that fit ``budget_s``."""
    dev = torch.device(device)
    config = TINY if dry_run else REAL
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = ViTFIQA(config).to(dev, dtype).eval()
    batches = (4, 16) if dry_run else (32, 128, 512)
    repeats = 2 if dry_run else 10
    rows, start = [], time.perf_counter()
    for batch in batches:
        if time.perf_counter() - start > budget_s / 2:
            break
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        rate = _time(model, batch, dev, dtype, repeats)
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        rows.append({"batch": batch, "crops_per_s": round(rate, 1),
                     "peak_gib": None if peak is None else round(peak, 2)})
    table = ["| ViT-FIQA | batch | crops/s | peak GPU mem (GiB) |", "|---|---:|---:|---:|"]
    name = "tiny (dry run)" if dry_run else "vit_b"
    table += [f"| {name} | {r['batch']} | {r['crops_per_s']} | {r['peak_gib'] if r['peak_gib'] is not None else '-'} |"
              for r in rows]
    return {"model": name, "dtype": str(dtype).removeprefix("torch."), "rows": rows, "table": "\n".join(table)}
