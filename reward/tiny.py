"""A tiny random-weight Stable Diffusion pipeline built offline from configs (tests and smoke runs).

Real diffusers/transformers classes at toy size — UNet (32, 64) channels with one layer per block,
sample size 16, cross-attention 32; a two-block VAE (32 px images); a 2-layer ``CLIPTextModel``; DDIM;
a hand-written byte-level BPE vocabulary for ``CLIPTokenizer`` — seeded, so the same call writes the
same weights. Its images are noise: use it to exercise code, never to judge results.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

_MERGES = ["f a", "c e</w>", "fa ce</w>", "p h", "o t", "ph ot", "phot o</w>"]


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values (what CLIP's byte-level BPE works on)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_clip_tokenizer(out_dir: str | Path, model_max_length: int = 32) -> Any:
    """Write ``vocab.json`` / ``merges.txt`` of a small byte-level BPE and return the ``CLIPTokenizer``."""
    from transformers import CLIPTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet]
    tokens += ["".join(m.split()) for m in _MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n", encoding="utf-8")
    return CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=model_max_length)


def make_tiny_pipeline(out_dir: str | Path, *, seed: int = 0) -> Path:
    """Save a tiny ``StableDiffusionPipeline`` (32x32 images) to ``out_dir`` and return the folder.

    Load it with ``StableDiffusionPipeline.from_pretrained(out_dir)`` or trl's
    ``DefaultDDPOStableDiffusionPipeline(str(out_dir))``.
    """
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:  # the pipeline saves its own tokenizer/ folder
        tokenizer = write_clip_tokenizer(tmp)
    vocab = tokenizer.get_vocab()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=32)
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=tokenizer.model_max_length, projection_dim=32,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    logger.info("wrote a tiny random-weight Stable Diffusion pipeline to %s (its images are noise)", out)
    return out
