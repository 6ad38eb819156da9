"""The face-video (FVQ-Rater) section of the GPU suite (``benchmarks/gpu_suite.py``, hook ``gpu_section``).

Scores synthetic face clips (mp4 files, decoded as streams by the prefetch workers, as users' files are) with a
real-size video model of random weights (time does not depend on them): a Qwen2.5-VL-3B-class backbone built on
the meta device and initialised on the GPU (as the suite's backbones are), a VideoMAE-base-class temporal encoder
(16 frames, 224 px), a Segformer-b0-class segmenter and the real-size random-weight face pack; 8 key frames a clip,
batch 1, 4 and 8 side by side: clips/s, frames/s (frames of the clips scored), peak GPU memory, CPU wait (the share
of time the model waited for decoded clips). ``dry_run``: the tiny video checkpoint (``feval make-tiny --video``)
at small sizes on the CPU, so the code cannot rot.

It lives beside the suite rather than in ``feval_core.video`` because it builds its models with the suite's
meta-device builder and the ``testing`` room's tokenizer and face pack, which the ``video`` room may not import.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("feval.bench")

ESTIMATE_S = {"gpu": 150.0, "dry_run": 60.0}
"""Rough cost of the whole section (builds, clip writing, warm-up, three batch sizes), for the suite's budget."""
GPU = dict(clips=16, frames=100, side=512, fps=25, batches=(1, 4, 8), pack_scale=1.0, det_size=640)
DRY = dict(clips=4, frames=16, side=128, fps=8, batches=(1, 2), pack_scale=0.125, det_size=128)


def estimate_s(dry_run: bool) -> float:
    return ESTIMATE_S["dry_run" if dry_run else "gpu"]


def write_clips(folder: Path, count: int, frames: int, side: int, fps: int) -> list[str]:
    """``count`` mp4 clips of a moving face (different seeds), ``frames`` frames of ``side`` px each."""
    from feval_core.testing.video import moving_face_frames, write_clip

    folder.mkdir(parents=True, exist_ok=True)
    return [str(write_clip(folder / f"clip{i:03d}.mp4", moving_face_frames(frames, side, seed=i), fps=fps))
            for i in range(count)]


def _meta_init(model_cls: Any, config: Any, device: str, dtype: torch.dtype) -> Any:
    """A transformers model built on the meta device, then allocated and initialised on ``device``."""
    with torch.device("meta"):
        model = model_cls._from_config(config, dtype=dtype)
    model.to_empty(device=device)
    for module in model.modules():
        module._is_hf_initialized = False
    torch.manual_seed(0)
    model.initialize_weights()
    return model.eval().requires_grad_(False)


def build_real_scorer(device: str, dtype: torch.dtype, work: Path, workers: int, *, backbone_key: str = "3b",
                      pack_scale: float = GPU["pack_scale"], det_size: int = GPU["det_size"]) -> Any:
    """The real-size random-weight video scorer described in the module doc (``backbone_key``, ``pack_scale``:
    smaller parts for a CPU check of this code)."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, VideoMAEConfig, VideoMAEModel
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from benchmarks.speed.backbones import SPECS, backbone_config, build_backbone
    from feval_core.faces.encoder import FaceEncoder
    from feval_core.model.backbone import _image_only_processor_class
    from feval_core.model.config import FaceEncoderConfig, FEvalConfig
    from feval_core.testing.facepack_sized import SIZED_PACK_NAME, write_sized_face_pack
    from feval_core.testing.tiny import build_tokenizer
    from feval_core.video.checkpoint import VideoParts
    from feval_core.video.config import VideoConfig
    from feval_core.video.encoders import IMAGENET_MEAN, IMAGENET_STD, PortraitEncoder, TemporalEncoder
    from feval_core.video.features import FeatureExtractor
    from feval_core.video.model import VideoLMM
    from feval_core.video.scorer import VideoScorer

    spec, vconfig = SPECS[backbone_key], VideoConfig()  # 8 key frames of 448 px, 16-frame clips, the shipped defaults
    tok = build_tokenizer("qwen2_5_vl")
    backbone = build_backbone(backbone_config(spec, tok), device=device, dtype=dtype, attn="sdpa")
    max_pixels = vconfig.frame_side ** 2
    processor = _image_only_processor_class("qwen2_5_vl")(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=max_pixels, patch_size=spec.patch,
                                                 merge_size=spec.merge, temporal_patch_size=spec.temporal_patch),
        tokenizer=tok, chat_template=tok.chat_template)
    root = work / "faces"
    write_sized_face_pack(root, scale=pack_scale)
    fcfg = FEvalConfig(base_model="synthetic", mode="trained", score_mode="mean", dims=("quality",),
                       num_face_tokens=4, lora_rank=16, lora_alpha=32, max_image_pixels=max_pixels,
                       face=FaceEncoderConfig(pack=SIZED_PACK_NAME, root=str(root), det_size=det_size))
    model = VideoLMM.from_parts(backbone, processor, fcfg, device=device, random_adapters=True)
    model.cast_experts(dtype)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    temporal = TemporalEncoder(_meta_init(VideoMAEModel, VideoMAEConfig(), device, dtype), mean, std)  # base
    labels = {i: f"class{i}" for i in range(150)} | {12: "person"}  # ADE20K's 150 classes, person at 12
    seg = SegformerConfig(num_labels=150, id2label=labels, label2id={v: k for k, v in labels.items()})  # b0
    portrait = PortraitEncoder(_meta_init(SegformerForSemanticSegmentation, seg, device, dtype), ("person",),
                               vconfig.portrait_size, mean, std)
    temporal, portrait = temporal.to(device), portrait.to(device)
    model = model.attach_video(vconfig, temporal.slots, temporal.hidden_size, portrait.feature_dim, None)
    faces = FaceEncoder(SIZED_PACK_NAME, root=root, device=device, det_size=(det_size, det_size))
    return VideoScorer(VideoParts(model, FeatureExtractor(vconfig, temporal, portrait, faces), work), workers=workers)


def build_tiny_scorer(work: Path, workers: int) -> Any:
    from feval_core.testing.video import make_tiny_video_checkpoint
    from feval_core.video.scorer import VideoScorer

    folder = make_tiny_video_checkpoint(work / "tiny-video", seed=0, samples=False)
    return VideoScorer.from_pretrained(folder, device="cpu", workers=workers)


def measure(scorer: Any, clips: list[str], batch: int, device: str, frames_per_clip: int) -> dict[str, Any]:
    """Clips/s of ``scorer.score`` on ``clips`` at ``batch`` clips a batch, after one warm-up batch."""
    from benchmarks.speed.measure import peak_memory_gib, peak_memory_reset, sync

    scorer.score(clips[:batch], batch_size=batch)  # warm-up: kernels, every worker's face sessions
    sync(device)
    peak_memory_reset(device)
    t0 = time.perf_counter()
    rows = scorer.score(clips, batch_size=batch)
    sync(device)
    elapsed = time.perf_counter() - t0
    failed = [r["error"] for r in rows if r["error"]]
    if failed:
        raise RuntimeError(f"the benchmark's own clips failed to score: {failed[:2]}")
    pf = scorer.last_prefetch
    return {"batch": batch, "clips": len(rows), "seconds": round(elapsed, 2),
            "clips_per_s": round(len(rows) / elapsed, 3),
            "frames_per_s": round(len(rows) * frames_per_clip / elapsed, 1),
            "peak_gib": round(peak_memory_gib(device), 2), "cpu_wait": round(pf.wait_s / elapsed, 3) if pf else None}


def _share(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def gpu_section(device: str, budget_s: float, dry_run: bool) -> dict[str, Any]:
    """Clips/s, frames/s, peak memory and CPU wait of video scoring at the batch sizes that fit ``budget_s``."""
    import os

    cfg = DRY if dry_run else GPU
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    workers = 1 if dry_run else max(1, min(8, os.cpu_count() or 1))
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="feval-video-bench-"))
    clips = write_clips(work / "clips", cfg["clips"], cfg["frames"], cfg["side"], cfg["fps"])
    scorer = build_tiny_scorer(work, workers) if dry_run else build_real_scorer(device, dtype, work, workers)
    build_s = time.perf_counter() - start
    rows = []
    for batch in cfg["batches"]:
        if rows and time.perf_counter() - start > budget_s * 0.8:
            logger.warning("video section: stopped before batch %d (budget)", batch)
            break
        rows.append(measure(scorer, clips, batch, device, cfg["frames"]))
    name = "tiny video checkpoint (dry run)" if dry_run else (
        "Qwen2.5-VL-3B-class + VideoMAE-base + Segformer-b0 + SCRFD-10G/iResNet-50 class")
    vc = scorer.vconfig
    mem = "peak GPU mem (GiB)" if device.startswith("cuda") else "peak RSS (GiB)"
    table = [f"| video model | batch | clips/s | frames/s | {mem} | CPU wait |", "|---|---:|---:|---:|---:|---:|"]
    table += [f"| {name} | {r['batch']} | {r['clips_per_s']} | {r['frames_per_s']} | {r['peak_gib']} | "
              f"{_share(r['cpu_wait'])} |" for r in rows]
    return {"model": name, "dtype": str(dtype).removeprefix("torch."), "build_s": round(build_s, 1),
            "clip": {"frames": cfg["frames"], "px": cfg["side"], "fps": cfg["fps"], "key_frames": vc.num_key_frames,
                     "clip_frames": vc.num_clip_frames},
            "workers": workers, "rows": rows, "table": "\n".join(table)}
