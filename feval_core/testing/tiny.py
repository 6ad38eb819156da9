"""Tiny random-weight backbones of the real classes (Qwen2.5-VL, InternVL, LLaVA), built offline.

They exist for tests and smoke runs: scores from them are meaningless. Everything is seeded, so
the same call writes the same weights.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..dimensions import ANSWER_PREFIX, EVAL_PROMPTS, LEVEL_WORDS

logger = logging.getLogger(__name__)

FAMILIES = ("qwen2_5_vl", "internvl", "llava")

_CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}IMAGE_PLACEHOLDER"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_IMAGE_MARKUP = {
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "internvl": "<IMG_CONTEXT>\n",
    "llava": "<image>\n",
}
_SPECIAL = {
    "qwen2_5_vl": ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"],
    "internvl": ["<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
    "llava": ["<image>"],
}


def _corpus() -> list[str]:
    """What the tiny tokenizers learn their vocabulary from: feval's own prompts and the words of the router's
    question paraphrases (a real tokenizer knows those words too; their labels are not used here)."""
    from ..questions import PARAPHRASES

    words = " ".join(LEVEL_WORDS)
    lines = list(EVAL_PROMPTS.values()) + list(ANSWER_PREFIX.values())
    lines += [f"The image is {w}." for w in LEVEL_WORDS]
    lines += ["a photo of a smiling woman with red hair", "portrait of an old man, studio light, 85mm",
              "Face: Reference face: Please rate the image. " + words]
    vocabulary = sorted({w.strip('?."{},').lower() for qs in PARAPHRASES.values() for q in qs for w in q.split()})
    return lines * 20 + [" ".join(vocabulary)] * 2  # feval's own words first: they get whole tokens in any vocab


def build_tokenizer(family: str, vocab_size: int = 1024) -> Any:
    """Byte-level BPE trained on a few sentences, with the family's special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.train_from_iterator(_corpus(), trainer)
    extra: dict[str, str] = {}
    if family == "internvl":
        extra = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                 "video_token": "<video>"}
    elif family == "qwen2_5_vl":
        extra = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                 "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"}
    elif family == "llava":
        extra = {"image_token": "<image>"}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, padding_side="left", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        bos_token=None, extra_special_tokens=extra,
    )
    fast.add_special_tokens({"additional_special_tokens": _SPECIAL[family]}, replace_extra_special_tokens=False)
    fast.chat_template = _CHATML.replace("IMAGE_PLACEHOLDER", _IMAGE_MARKUP[family])
    return fast


def build_sentencepiece_tokenizer(family: str = "llava", vocab_size: int = 450, *,
                                  dummy_prefix: bool = False) -> Any:
    """A Llama-style SentencePiece tokenizer ("▁word" pieces, byte fallback) with the special tokens and chat
    template :func:`build_tokenizer` gives ``family``; trained offline on the same corpus.

    A BPE model with byte fallback (the 256 ``<0xNN>`` pieces count in ``vocab_size``; at about 300 and below,
    words are spelt letter by letter) behind a ``Metaspace`` pre-tokenizer and decoder (prepend scheme "first"),
    wrapped in ``LlamaTokenizerFast`` (``<s>``, ``</s>``, ``<unk>``, BOS added, left padding).
    ``dummy_prefix=True`` adds the ``Prepend("▁")`` normalizer of Llama-2 / LLaVA-1.5 ``tokenizer.json`` files:
    then ``" good"`` alone starts with a lone ``"▁"`` piece, while after an answer prefix the word is ``"▁good"``.
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import LlamaTokenizerFast

    reference = build_tokenizer(family)  # the family's special tokens and chat template
    special = ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=max(vocab_size - 256, len(special) + 1), show_progress=False,
                                  special_tokens=special)
    trained.train_from_iterator(_corpus(), trainer)
    model = json.loads(trained.to_str())["model"]
    # Llama's layout: special tokens, then the 256 byte pieces (ordinary vocabulary, not added tokens), then pieces
    order = special + [f"<0x{b:02X}>" for b in range(256)]
    order += sorted((p for p in model["vocab"] if p not in special), key=model["vocab"].__getitem__)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(order)}, merges=merges, unk_token="<unk>",
                               byte_fallback=True))
    tok.add_special_tokens(special)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    if dummy_prefix:
        tok.normalizer = normalizers.Prepend("▁")
    tok.decoder = decoders.Sequence([decoders.ByteFallback(),
                                     decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)])
    fast = LlamaTokenizerFast(
        tokenizer_object=tok, add_bos_token=True, add_eos_token=False, bos_token="<s>", eos_token="</s>",
        unk_token="<unk>", pad_token="<|endoftext|>", padding_side="left",
        extra_special_tokens=dict(reference.init_kwargs.get("extra_special_tokens") or {}),
    )
    fast.add_special_tokens({"additional_special_tokens": _SPECIAL[family]}, replace_extra_special_tokens=False)
    fast.chat_template = reference.chat_template
    return fast


def _text_config(tok: Any, hidden: int = 64) -> dict[str, Any]:
    return dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False,
                bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def build_tiny_backbone(family: str, out_dir: str | Path, *, seed: int = 0, image_size: int = 56,
                        init_std: float | None = None) -> Path:
    """Write a tiny ``family`` backbone (model + processor) to ``out_dir`` and return the folder.

    ``init_std`` overrides the weight initialisation std (transformers' ``initializer_range``, 0.02). At this
    width the default gives near-uniform attention and activations that barely depend on the input; a larger
    std (e.g. 0.2) gives a random backbone whose features carry its inputs, as training tests need.
    """
    from transformers import AutoModelForImageTextToText

    if family not in FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; choose from {', '.join(FAMILIES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(family)
    vocab = len(tok)
    torch.manual_seed(seed)
    if family == "qwen2_5_vl":
        config, processor = _qwen(tok, vocab, image_size)
    elif family == "internvl":
        config, processor = _internvl(tok, vocab, image_size)
    else:
        config, processor = _llava(tok, vocab, image_size)
    if init_std is not None:
        for cfg in (config, config.text_config, config.vision_config):
            cfg.initializer_range = float(init_std)
    model = AutoModelForImageTextToText.from_config(config)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    _real_processor_class(out, family)
    logger.info("wrote tiny %s backbone (%d parameters) to %s", family,
                sum(p.numel() for p in model.parameters()), out)
    return out


def _real_processor_class(out: Path, family: str) -> None:
    """Saved processors name the family's real class so any transformers install can load them."""
    names = {"qwen2_5_vl": "Qwen2_5_VLProcessor", "internvl": "InternVLProcessor", "llava": "LlavaProcessor"}
    for fname in ("processor_config.json", "tokenizer_config.json", "preprocessor_config.json"):
        f = out / fname
        if f.exists():
            data = json.loads(f.read_text())
            if "processor_class" in data:
                data["processor_class"] = names[family]
                f.write_text(json.dumps(data, indent=2))


def _qwen(tok: Any, vocab: int, image_size: int) -> tuple[Any, Any]:
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from ..model.backbone import _image_only_processor_class

    hidden = 64
    text = _text_config(tok, hidden)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=hidden, fullatt_block_indexes=[1], window_size=56)
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision,
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessorPil(min_pixels=pixels, max_pixels=pixels, patch_size=14, merge_size=2,
                                               temporal_patch_size=2)
    processor = _image_only_processor_class("qwen2_5_vl")(image_processor=image_processor, tokenizer=tok,
                                                           chat_template=tok.chat_template)
    return config, processor


def _internvl(tok: Any, vocab: int, image_size: int) -> tuple[Any, Any]:
    from transformers import InternVLConfig
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
        GotOcr2ImageProcessorPil,
    )

    from ..model.backbone import _image_only_processor_class

    hidden = 64
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  image_size=[image_size, image_size], patch_size=[14, 14])
    text = _text_config(tok, hidden)
    text["model_type"] = "qwen2"
    seq = (image_size // 14) ** 2 // 4
    config = InternVLConfig(vision_config=vision, text_config=text,
                            image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
                            image_seq_length=seq, downsample_ratio=0.5, tie_word_embeddings=False)
    image_processor = GotOcr2ImageProcessorPil(size={"height": image_size, "width": image_size},
                                               crop_to_patches=False, max_patches=1)
    processor = _image_only_processor_class("internvl")(image_processor=image_processor, tokenizer=tok,
                                                         chat_template=tok.chat_template, image_seq_length=seq)
    return config, processor


def _llava(tok: Any, vocab: int, image_size: int) -> tuple[Any, Any]:
    from transformers import LlavaConfig, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    hidden = 64
    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, image_size=image_size, patch_size=14, projection_dim=32)
    text = _text_config(tok, hidden)
    text["model_type"] = "llama"
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1,
                         tie_word_embeddings=False)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=tok.chat_template)
    return config, processor


TINY_NOTICE = ("tiny random-weight checkpoint for tests and smoke runs: its scores are MEANINGLESS. "
               "Train a real one with `feval train` or use zero-shot mode with a public VLM.")


def make_tiny_checkpoint(out_dir: str | Path, *, family: str = "qwen2_5_vl", seed: int = 0,
                         image_size: int = 56) -> Path:
    """Write a complete, self-contained tiny feval checkpoint (backbone, processor, face pack, experts, heads).

    Layout: ``feval_config.json``, ``projectors.safetensors``, ``adapters/<dim>/``, ``backbone/``,
    ``face_pack/models/tiny_face/``. Everything is random (seeded) and built with no network.
    """
    from ..model.config import FaceEncoderConfig, FEvalConfig
    from ..model.lmm import FEvalModel
    from ..scoring.scorer import FEvalScorer
    from .facepack import write_tiny_face_pack

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    build_tiny_backbone(family, out / "backbone", seed=seed, image_size=image_size)
    write_tiny_face_pack(out / "face_pack", name="tiny_face", seed=seed)
    config = FEvalConfig(base_model="backbone", mode="trained", score_mode="mean", num_face_tokens=2,
                         lora_rank=4, lora_alpha=8, max_image_pixels=image_size * image_size,
                         face=FaceEncoderConfig(pack="tiny_face", root="face_pack", det_size=128, det_thresh=0.5))
    torch.manual_seed(seed)
    model = FEvalModel.build(config, base_dir=out.resolve(), random_adapters=True)
    with torch.no_grad():  # random heads so that scores vary with the input
        for p in model.heads.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    FEvalScorer(model, None, source=out.resolve()).save_pretrained(out)
    write_samples(out / "samples", seed=seed)
    (out / "README.md").write_text(f"# tiny feval checkpoint ({family})\n\n{TINY_NOTICE}\n\n"
                                   "`samples/` holds images the tiny face pack detects, for smoke runs.\n")
    logger.warning(TINY_NOTICE)
    return out


def write_samples(folder: str | Path, *, seed: int = 0, size: int = 128) -> Path:
    """Write a few images for smoke runs: two 'faces' the tiny pack detects, a reference, and one without."""
    import numpy as np
    from PIL import Image

    from .facepack import draw_tiny_face

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    dark = np.full((size, size, 3), 20, dtype=np.uint8)
    q = size // 4
    Image.fromarray(draw_tiny_face(dark, (q, q, 3 * q, 3 * q), seed=seed)).save(out / "face_a.png")
    Image.fromarray(draw_tiny_face(dark, (q, q, 3 * q, 3 * q), seed=seed + 1)).save(out / "face_b.png")
    Image.fromarray(draw_tiny_face(dark, (8, 16, 8 + 2 * q, 16 + 2 * q), seed=seed)).save(out / "reference.png")
    Image.fromarray(dark).save(out / "no_face.png")
    return out
