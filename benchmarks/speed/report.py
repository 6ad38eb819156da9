"""The throughput table: device names, one result row per measurement, Markdown."""

from __future__ import annotations

import math
import platform
from typing import Any

import torch

from .backbones import BackboneSpec
from .flops import model_flops


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def result_row(spec: BackboneSpec, size: int, batch: int, m: dict[str, Any], peak: float, fit: float,
               lora_rank: int = 16) -> dict[str, Any]:
    """One row of the table (and the JSON) from a :func:`~.measure.measure_fast` measurement."""
    flops = model_flops(spec, m["stats"], lora_rank)
    st = m["stats"]
    return {
        "backbone": spec.name, "batch": batch, "image_px": size, "img_per_s": m["img_per_s"],
        "seconds": m["seconds"], "images": m["images"], "peak_mem_gib": m["peak_mem_gib"],
        "flops_per_image": flops["total"] / m["images"], "vision_flop_share": flops["vision"] / flops["total"],
        "mfu": flops["total"] / m["seconds"] / peak, "cpu_wait": m["cpu_wait"],
        "llm_tokens_per_image": st.tokens / m["images"], "padding": st.padding_fraction,
        "llm_passes": st.passes, "vision_runs": st.images, "param_count_fit": fit,
        "naive_img_per_s": math.nan, "ratio_to_naive": math.nan,
    }


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    mem = "peak GPU mem (GiB)" if meta["device"].startswith("cuda") else "peak RSS (GiB)"
    lines = [
        f"Device: {meta['device_name']}; measured {meta['peak_dtype']} matmul peak "
        f"{meta['peak_flops'] / 1e12:.3g} TFLOP/s; attention {meta['attn']}; faces: {meta['face_pack']}",
        "",
        f"| backbone | batch | image px | LLM tokens/img | img/s | MFU | {mem} | x naive | CPU wait | "
        "CPU side img/s | device |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['backbone']} | {r['batch']} | {r['image_px']} | {r['llm_tokens_per_image']:.0f} | "
            f"{r['img_per_s']:.2f} | {100 * r['mfu']:.1f}% | {r['peak_mem_gib']:.1f} | {r['ratio_to_naive']:.1f}x | "
            f"{100 * r['cpu_wait']:.1f}% | {r.get('prep_img_per_s', math.nan):.1f} | {meta['device_name']} |")
    lines.append("")
    for n in meta["naive"]:
        lines.append(f"Naive path ({n['backbone']}, {n['image_px']} px, fp32, one image x one dimension per "
                     f"forward): {n['img_per_s']:.3f} img/s")
    for a in meta.get("ablations", []):
        parts = ", ".join(f"{k} {v:.2f}" for k, v in a["img_per_s"].items())
        lines.append(f"Ablations ({a['backbone']}, batch {a['batch']}, {a['image_px']} px), img/s: {parts}")
    return "\n".join(lines)
