"""Qwen2.5-VL-class backbones at real size from configs (random weights), the scorer around them, test images.

A backbone is built on the ``meta`` device (no memory, no init) and then materialised and initialised on the
target device (``to_empty`` + transformers' own ``initialize_weights``): a 7B model never passes through CPU
memory or a CPU init. Time does not depend on weight values, so random weights time the same as trained ones.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

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
    "mid": BackboneSpec("mid-size Qwen2.5-VL-class (CPU)", 256, 4, 4, 2, 1024, 1024, vision_depth=8,
                        vision_hidden=256, vision_heads=4, vision_intermediate=1024, fullatt=(3, 7)),
    "small": BackboneSpec("small Qwen2.5-VL-class (CPU)", 128, 2, 4, 2, 256, 1024, vision_depth=2,
                          vision_hidden=64, vision_heads=2, vision_intermediate=128, fullatt=(1,)),
}


def backbone_config(spec: BackboneSpec, tok: Any) -> Any:
    """The ``Qwen2_5_VLConfig`` of ``spec``, with the special-token ids of tokenizer ``tok``."""
    from transformers import Qwen2_5_VLConfig

    text = dict(vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
                max_position_embeddings=128000, tie_word_embeddings=spec.tie_embeddings,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": spec.mrope_section},
                bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(depth=spec.vision_depth, hidden_size=spec.vision_hidden, intermediate_size=spec.vision_intermediate,
                  num_heads=spec.vision_heads, patch_size=spec.patch, spatial_merge_size=spec.merge,
                  temporal_patch_size=spec.temporal_patch, out_hidden_size=spec.hidden,
                  fullatt_block_indexes=list(spec.fullatt), window_size=spec.window)
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=spec.tie_embeddings,
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))


def build_backbone(config: Any, *, device: str, dtype: torch.dtype, attn: str, seed: int = 0) -> Any:
    """``Qwen2_5_VLForConditionalGeneration`` built on the meta device, then allocated and initialised on ``device``
    (transformers' initialisation: normal(0, 0.02) weights, unit norms, rotary frequencies computed)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation=attn)
    model.to_empty(device=device)
    for module in model.modules():  # built on meta: nothing has real values yet, whatever the flags say
        module._is_hf_initialized = False
    torch.manual_seed(seed)
    model.initialize_weights()
    model.tie_weights()
    return model.eval()


def build_scorer(spec: BackboneSpec, *, device: str, dtype: torch.dtype, max_pixels: int, face_root: Path,
                 face_pack: str, det_size: int, attn: str, lora_rank: int = 16, face_tokens: int = 4,
                 vision_experts: str = "none") -> Any:
    """A complete FEvalScorer around a randomly initialised backbone built on ``device``."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from feval_core.faces.encoder import FaceEncoder
    from feval_core.model.backbone import _image_only_processor_class
    from feval_core.model.config import FaceEncoderConfig, FEvalConfig
    from feval_core.model.lmm import FEvalModel
    from feval_core.scoring.scorer import FEvalScorer
    from feval_core.testing.tiny import build_tokenizer

    tok = build_tokenizer("qwen2_5_vl")  # synthetic tokenizer; the vocabulary size of the config is the real one
    t0 = time.perf_counter()
    backbone = build_backbone(backbone_config(spec, tok), device=device, dtype=dtype, attn=attn)
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
