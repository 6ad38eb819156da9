#!/usr/bin/env python
"""Scoring throughput of F-Eval at real size (random weights, no download), next to the naive path.

Builds Qwen2.5-VL-7B- and 3B-class backbones from hand-written configs, directly on the device in bf16, with
four LoRA experts (r=16 on the LLM FFN) and K=4 face tokens, and scores synthetic face JPEGs on all four
dimensions through the real pipeline (``FEvalScorer.iter_scores``: worker threads decode, detect faces and
run the image processor; one vision-tower run per image; rows bucketed by length). For each batch size and
image size it reports images/s, model FLOPs utilisation (analytic FLOPs over the bf16 matmul peak measured
in the same run), peak GPU memory, the share of time the model waited on the CPU side, and the ratio to
the naive path (one image, one dimension, one forward at a time, fp32). Time does not depend on weight
values, so random weights time the same as trained ones.

    python benchmarks/throughput.py --preset real --json throughput.json      # GPU: 7B and 3B
    python benchmarks/throughput.py --preset small                            # CPU smoke run (CI)

Prints a Markdown table and writes the same numbers as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

logger = logging.getLogger("feval.bench")

PROMPT = "a photo of a smiling woman with red hair, studio light, 85mm"


@dataclass(frozen=True)
class BackboneSpec:
    """A Qwen2.5-VL-class backbone, by its sizes."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tie_embeddings: bool = False
    vision_depth: int = 32
    vision_hidden: int = 1280
    vision_heads: int = 16
    vision_intermediate: int = 3420
    fullatt: tuple[int, ...] = (7, 15, 23, 31)
    window: int = 112
    patch: int = 14
    merge: int = 2
    temporal_patch: int = 2

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def mrope_section(self) -> list[int]:
        half = self.head_dim // 2  # Qwen2.5-VL: [16, 24, 24] for head_dim 128
        t = half // 4
        return [t, (half - t) // 2, half - t - (half - t) // 2]


SPECS = {
    "7b": BackboneSpec("Qwen2.5-VL-7B-class", 3584, 28, 28, 4, 18944, 152064),
    "3b": BackboneSpec("Qwen2.5-VL-3B-class", 2048, 36, 16, 2, 11008, 151936, tie_embeddings=True),
    "small": BackboneSpec("small Qwen2.5-VL-class (CPU)", 128, 2, 4, 2, 256, 1024, vision_depth=2,
                          vision_hidden=64, vision_heads=2, vision_intermediate=128, fullatt=(1,)),
}
PRESETS = {  # backbones, batch sizes, image sizes, images per measurement, naive images, face detector size
    "real": (["7b", "3b"], [1, 4, 8, 16, 32], [512, 1024], 64, 4, 640),
    "small": (["small"], [1, 4], [112, 224], 8, 2, 160),
}


# -- building --------------------------------------------------------------------------------------
def build_scorer(spec: BackboneSpec, *, device: str, dtype: torch.dtype, max_pixels: int, face_root: Path,
                 face_pack: str, det_size: int, attn: str, lora_rank: int = 16, face_tokens: int = 4,
                 vision_experts: str = "none") -> Any:
    """A complete FEvalScorer around a randomly initialised backbone built on ``device``."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from feval_core.faces.encoder import FaceEncoder
    from feval_core.model.backbone import _image_only_processor_class
    from feval_core.model.config import FaceEncoderConfig, FEvalConfig
    from feval_core.model.lmm import FEvalModel
    from feval_core.scoring.scorer import FEvalScorer
    from feval_core.testing.tiny import build_tokenizer

    tok = build_tokenizer("qwen2_5_vl")  # synthetic tokenizer; the vocabulary size below is the real one
    text = dict(vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
                max_position_embeddings=128000, tie_word_embeddings=spec.tie_embeddings,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": spec.mrope_section},
                bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(depth=spec.vision_depth, hidden_size=spec.vision_hidden, intermediate_size=spec.vision_intermediate,
                  num_heads=spec.vision_heads, patch_size=spec.patch, spatial_merge_size=spec.merge,
                  temporal_patch_size=spec.temporal_patch, out_hidden_size=spec.hidden,
                  fullatt_block_indexes=list(spec.fullatt), window_size=spec.window)
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=spec.tie_embeddings,
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):  # random init straight on the device: no slow CPU init, no copy
        backbone = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation=attn)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=max_pixels, patch_size=spec.patch,
                                               merge_size=spec.merge, temporal_patch_size=spec.temporal_patch)
    processor = _image_only_processor_class("qwen2_5_vl")(image_processor=image_processor, tokenizer=tok,
                                                           chat_template=tok.chat_template)
    fcfg = FEvalConfig(base_model="synthetic", mode="trained", score_mode="mean", num_face_tokens=face_tokens,
                       lora_rank=lora_rank, lora_alpha=2 * lora_rank, max_image_pixels=max_pixels,
                       vision_experts=vision_experts,
                       face=FaceEncoderConfig(pack=face_pack, root=str(face_root), det_size=det_size))
    model = FEvalModel.from_parts(backbone, processor, fcfg, device=device, random_adapters=True)
    model.cast_experts(dtype)
    faces = FaceEncoder(face_pack, root=face_root, device=device, det_size=(det_size, det_size))
    logger.info("built %s on %s in %.1f s", spec.name, device, time.perf_counter() - t0)
    return FEvalScorer(model, faces)


def write_images(folder: Path, count: int, size: int, seed: int = 0) -> list[str]:
    """Synthetic JPEG face images (a tiny-pack face on textured dark background)."""
    from PIL import Image

    from feval_core.testing.facepack import draw_tiny_face

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        img = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
        side = int(size * rng.uniform(0.35, 0.6))
        x, y = (int(v) for v in rng.integers(0, size - side, size=2))
        img = draw_tiny_face(img, (x, y, x + side, y + side), seed=i % 7)
        path = folder / f"img_{size}_{i:05d}.jpg"
        Image.fromarray(img).save(path, quality=92)
        paths.append(str(path))
    return paths


# -- FLOPs -----------------------------------------------------------------------------------------
def llm_params_per_token(spec: BackboneSpec, lora_rank: int) -> int:
    """Weights one token multiplies through in the LLM (all layers, one expert), excluding the LM head."""
    h, kv = spec.hidden, spec.kv_heads * spec.head_dim
    attn = h * h + 2 * h * kv + h * h
    mlp = 3 * h * spec.intermediate
    lora = 3 * lora_rank * (h + spec.intermediate)  # gate/up: A h x r, B r x inter; down: A inter x r, B r x h
    return spec.layers * (attn + mlp + lora)


def vision_params_per_patch(spec: BackboneSpec) -> int:
    d = spec.vision_hidden
    per_layer = 4 * d * d + 3 * d * spec.vision_intermediate  # qkv + proj, SwiGLU MLP
    embed = 3 * spec.temporal_patch * spec.patch * spec.patch * d
    merger = (4 * d * 4 * d + 4 * d * spec.hidden) // 4  # per merged token of 4 patches
    return spec.vision_depth * per_layer + embed + merger


def model_flops(spec: BackboneSpec, stats: Any, lora_rank: int) -> dict[str, float]:
    """Analytic FLOPs of the work in ``stats`` (a PassStats): 2 x weights x tokens, plus attention."""
    llm = 2.0 * llm_params_per_token(spec, lora_rank) * stats.tokens
    llm += 2.0 * spec.layers * spec.hidden * stats.tokens_sq  # causal QK^T and AV: 2 * h * len^2 per layer
    llm += 2.0 * spec.hidden * spec.vocab * stats.rows  # LM head at the answer position only
    d = spec.vision_hidden
    window = (spec.window // spec.patch) ** 2
    full = len(spec.fullatt)
    vision = 2.0 * vision_params_per_patch(spec) * stats.vision_inputs
    vision += 4.0 * d * window * stats.vision_inputs * (spec.vision_depth - full)
    vision += 4.0 * d * stats.vision_inputs_sq * full
    return {"llm": llm, "vision": vision, "total": llm + vision}


def check_param_count(spec: BackboneSpec, scorer: Any, lora_rank: int) -> float:
    """Counted LLM matmul weights (one expert) over the analytic count: 1.0 means the FLOP formula fits."""
    lm = scorer.model.base_model.model.language_model
    counted = 0
    for name, p in lm.layers.named_parameters():
        if p.ndim != 2:
            continue
        if "lora_" in name:
            counted += p.numel() if ".quality." in name else 0
        else:
            counted += p.numel()
    return counted / llm_params_per_token(spec, lora_rank)


# -- measurements ----------------------------------------------------------------------------------
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


# -- report ----------------------------------------------------------------------------------------
def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


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
            f"{100 * r['cpu_wait']:.1f}% | {r['prep_img_per_s']:.1f} | {meta['device_name']} |")
    lines.append("")
    for n in meta["naive"]:
        lines.append(f"Naive path ({n['backbone']}, {n['image_px']} px, fp32, one image x one dimension per "
                     f"forward): {n['img_per_s']:.3f} img/s")
    for a in meta.get("ablations", []):
        parts = ", ".join(f"{k} {v:.2f}" for k, v in a["img_per_s"].items())
        lines.append(f"Ablations ({a['backbone']}, batch {a['batch']}, {a['image_px']} px), img/s: {parts}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), help="real (GPU: 7B + 3B) or small (CPU); default: by device")
    p.add_argument("--backbones", nargs="+", choices=sorted(SPECS))
    p.add_argument("--batch-sizes", nargs="+", type=int)
    p.add_argument("--image-sizes", nargs="+", type=int)
    p.add_argument("--images", type=int, help="images per measurement (at least 3 batches)")
    p.add_argument("--naive-images", type=int, help="images timed on the naive path")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, flash_attention_2, eager)")
    p.add_argument("--max-pixels", type=int, help="VLM input resolution cap (default: the largest image size^2)")
    p.add_argument("--workers", type=int, help="prefetch threads (default: the scorer's)")
    p.add_argument("--max-batch-tokens", type=int, help="cap on padded tokens per LLM pass (default: none)")
    p.add_argument("--face-root", help="insightface root with models/<pack> (default: a tiny pack written now)")
    p.add_argument("--face-pack", default="tiny_face")
    p.add_argument("--det-size", type=int, help="face detector input size (default: 640 real, 160 small)")
    p.add_argument("--ablations", action="store_true", help="also time the fast path with each speed-up off")
    p.add_argument("--no-naive", action="store_true", help="skip the naive path")
    p.add_argument("--json", help="write results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    preset = PRESETS[args.preset or ("real" if device.startswith("cuda") else "small")]
    backbones = args.backbones or preset[0]
    batches = sorted(args.batch_sizes or preset[1])
    sizes = args.image_sizes or preset[2]
    n_images = args.images or preset[3]
    n_naive = args.naive_images if args.naive_images is not None else preset[4]
    det_size = args.det_size or preset[5]
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    max_pixels = args.max_pixels or max(sizes) ** 2
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # the naive fp32 path is plain fp32

    work = Path(tempfile.mkdtemp(prefix="feval-bench-"))
    face_root = Path(args.face_root) if args.face_root else work / "faces"
    if not args.face_root:
        from feval_core.testing.facepack import write_tiny_face_pack

        write_tiny_face_pack(face_root, name=args.face_pack)
    images = {s: write_images(work / f"img{s}", max(per_run(n_images, b) for b in batches) + 1, s) for s in sizes}
    refs = {s: images[s][-1] for s in sizes}

    peak = matmul_peak(device, dtype)
    meta: dict[str, Any] = {"device": device, "device_name": device_name(device), "peak_flops": peak,
                            "peak_dtype": str(dtype).replace("torch.", ""), "attn": args.attn,
                            "face_pack": args.face_pack if args.face_root else "tiny_face (synthetic)",
                            "torch": torch.__version__, "command": " ".join(["benchmarks/throughput.py", *(argv or sys.argv[1:])]),
                            "naive": [], "ablations": []}
    import transformers

    meta["transformers"] = transformers.__version__
    results: list[dict[str, Any]] = []
    for key in backbones:
        spec = SPECS[key]
        scorer = build_scorer(spec, device=device, dtype=dtype, max_pixels=max_pixels, face_root=face_root,
                              face_pack=args.face_pack, det_size=det_size, attn=args.attn)
        if args.workers is not None:
            scorer.workers = args.workers
        scorer.max_batch_tokens = args.max_batch_tokens
        fit = check_param_count(spec, scorer, 16)
        if abs(fit - 1.0) > 0.01:
            logger.warning("analytic LLM weights differ from the model's by %.1f%%", 100 * (fit - 1))
        rows = []
        for size in sizes:
            for b in batches:
                paths = images[size][:-1][: per_run(n_images, b)]
                try:
                    m = measure_fast(scorer, paths, refs[size], b, device)
                except torch.cuda.OutOfMemoryError:
                    logger.warning("%s b=%d %dpx: out of GPU memory; skipped (try --max-batch-tokens)",
                                   spec.name, b, size)
                    scorer.model.stats = None
                    torch.cuda.empty_cache()
                    continue
                flops = model_flops(spec, m["stats"], 16)
                st = m["stats"]
                rows.append({
                    "backbone": spec.name, "batch": b, "image_px": size, "img_per_s": m["img_per_s"],
                    "seconds": m["seconds"], "images": m["images"], "peak_mem_gib": m["peak_mem_gib"],
                    "flops_per_image": flops["total"] / m["images"], "vision_flop_share": flops["vision"] / flops["total"],
                    "mfu": flops["total"] / m["seconds"] / peak, "cpu_wait": m["cpu_wait"],
                    "llm_tokens_per_image": st.tokens / m["images"], "padding": st.padding_fraction,
                    "llm_passes": st.passes, "vision_runs": st.images, "param_count_fit": fit,
                })
                logger.info("%s b=%d %dpx: %.2f img/s, MFU %.1f%%", spec.name, b, size, m["img_per_s"],
                            100 * rows[-1]["mfu"])
            sized = [r for r in rows if r["image_px"] == size]
            if not sized:
                continue
            best = max(sized, key=lambda r: r["img_per_s"])
            prep = measure_prep(scorer, images[size][:-1], best["batch"])
            for r in rows:
                if r["image_px"] == size:
                    r["prep_img_per_s"] = prep
            if args.ablations:
                paths = images[size][:-1][: per_run(n_images, best["batch"])]
                meta["ablations"].append({"backbone": spec.name, "batch": best["batch"], "image_px": size,
                                          "img_per_s": measure_ablations(scorer, paths, refs[size], best["batch"],
                                                                         device)})
        if not args.no_naive and n_naive > 0:
            from feval_core.model.vision_attention import restore_window_attention

            scorer.model.float()  # the naive path: fp32 weights (experts and heads included)
            restore_window_attention(scorer.model.backbone)  # and transformers' own per-window vision loop
            for size in sizes:
                ips = measure_naive(scorer, images[size][: n_naive + 1], refs[size], device)
                meta["naive"].append({"backbone": spec.name, "image_px": size, "img_per_s": ips})
                for r in rows:
                    if r["image_px"] == size:
                        r["naive_img_per_s"] = ips
                        r["ratio_to_naive"] = r["img_per_s"] / ips
        for r in rows:
            r.setdefault("naive_img_per_s", math.nan)
            r.setdefault("ratio_to_naive", math.nan)
        results.extend(rows)
        del scorer
        if device.startswith("cuda"):
            torch.cuda.empty_cache()

    table = markdown(results, meta)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results, "table": table}, indent=2,
                                              default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
