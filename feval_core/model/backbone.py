"""Loading the VLM backbone and its processor (Qwen2.5-VL, InternVL-hf, LLaVA-style and other
``AutoModelForImageTextToText`` models), safetensors only, ``trust_remote_code`` off unless asked.

The tokenizer rules (rating-word ids, escaping special tokens in user text, the face token) live in
:mod:`feval_core.model.tokens` and are re-exported here."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .config import PICKLE_SUFFIXES
from .tokens import FACE_TOKEN, escape_special, rating_token_ids

__all__ = ["FACE_TOKEN", "add_face_token", "escape_special", "image_token_ids", "load_backbone", "load_processor",
           "rating_token_ids"]

logger = logging.getLogger(__name__)

# model_type -> (processor class name used when AutoProcessor cannot build one, its module)
_IMAGE_ONLY_FAMILIES = {
    "qwen2_5_vl": ("Qwen2_5_VLProcessor", "transformers.models.qwen2_5_vl.processing_qwen2_5_vl"),
    "qwen2_vl": ("Qwen2VLProcessor", "transformers.models.qwen2_vl.processing_qwen2_vl"),
    "internvl": ("InternVLProcessor", "transformers.models.internvl.processing_internvl"),
}


def _image_only_processor_class(model_type: str) -> type:
    """A subclass of the family's processor that needs no video processor (and so no torchvision).

    transformers 5 builds Qwen2.5-VL/InternVL processors with a video processor, which imports
    torchvision; feval scores still images only, so the image-only variant is equivalent.
    """
    import importlib

    name, module = _IMAGE_ONLY_FAMILIES[model_type]
    base = getattr(importlib.import_module(module), name)

    if model_type == "internvl":
        def __init__(self, image_processor=None, tokenizer=None, image_seq_length: int = 256,  # noqa: N807
                     chat_template=None, **kwargs):
            kwargs.pop("video_processor", None)
            base.__init__(self, image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                          image_seq_length=image_seq_length, chat_template=chat_template, **kwargs)
    else:
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):  # noqa: N807
            kwargs.pop("video_processor", None)
            base.__init__(self, image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                          chat_template=chat_template, **kwargs)

    cls = type(f"ImageOnly{name}", (base,), {"__init__": __init__})
    return cls


def _check_no_pickles(folder: Path) -> None:
    """Refuse folders whose weights are only available as pickles."""
    if not folder.is_dir():
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    has_st = any(p.suffix == ".safetensors" for p in folder.iterdir())
    if pickles and not has_st:
        raise CheckpointError(
            f"{folder} holds only pickle weights ({', '.join(pickles[:3])}); feval loads safetensors only. "
            "Convert them with `model.save_pretrained(dir, safe_serialization=True)` in a trusted environment."
        )


def default_dtype(device: str | torch.device, *, bf16: bool | None = None) -> torch.dtype:
    """The weight dtype when none is asked for: bfloat16 on a GPU that supports it, else float32; float32 on
    the CPU. Never float16: Qwen-VL's activations are known to overflow it (inf/NaN scores).

    ``bf16`` overrides the support check (a host such as ComfyUI may know better); by default a CUDA GPU
    supports it from compute capability 8 (Ampere) on, and ROCm always.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return torch.float32
    if bf16 is None:
        bf16 = device.type == "cuda" and torch.cuda.is_available() and (
            bool(torch.version.hip) or torch.cuda.get_device_properties(device).major >= 8)
    return torch.bfloat16 if bf16 else torch.float32


def load_processor(name_or_path: str | Path, *, trust_remote_code: bool = False, **hub_kwargs: Any) -> Any:
    """Load the processor of a VLM; falls back to an image-only processor when the video part cannot load."""
    from transformers import AutoConfig, AutoProcessor

    src = str(name_or_path)
    config = AutoConfig.from_pretrained(src, trust_remote_code=trust_remote_code, **hub_kwargs)
    model_type = getattr(config, "model_type", "")
    error: Exception | None = None
    try:
        processor = AutoProcessor.from_pretrained(src, trust_remote_code=trust_remote_code, **hub_kwargs)
        if hasattr(processor, "image_processor") and hasattr(processor, "tokenizer"):
            return _fix_padding(processor)
        error = TypeError(f"AutoProcessor returned {type(processor).__name__}, not a multimodal processor")
    except (ImportError, ValueError, OSError, TypeError, AttributeError, KeyError) as exc:
        error = exc
    if model_type not in _IMAGE_ONLY_FAMILIES:
        raise CheckpointError(
            f"could not load an image processor for {src!r} (model_type={model_type!r}): {error}. "
            "Check that the folder has processor/preprocessor configs and a tokenizer."
        ) from error
    logger.info("using the image-only %s processor (its video processor is unavailable here)", model_type)
    logger.debug("AutoProcessor failed for %s: %s", src, error)
    error = None  # its traceback holds this frame and its callers' (with the model being built): let it go now
    cls = _image_only_processor_class(model_type)
    processor = cls.from_pretrained(src, trust_remote_code=trust_remote_code, **hub_kwargs)
    return _fix_padding(processor)


def _fix_padding(processor: Any) -> Any:
    # Scores are read at the last position: left padding keeps it the last real token for every row.
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


def load_backbone(
    name_or_path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = "sdpa",
    trust_remote_code: bool = False,
    **hub_kwargs: Any,
) -> torch.nn.Module:
    """Load a frozen ``AutoModelForImageTextToText`` backbone in eval mode."""
    from transformers import AutoModelForImageTextToText

    path = Path(str(name_or_path))
    _check_no_pickles(path)
    kwargs: dict[str, Any] = dict(dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code, **hub_kwargs)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForImageTextToText.from_pretrained(str(name_or_path), **kwargs)
    except ValueError as exc:
        if attn_implementation and "attn_implementation" in str(exc) or "does not support" in str(exc):
            kwargs.pop("attn_implementation", None)
            logger.warning("%s does not support attn_implementation=%s; using the default", name_or_path,
                           attn_implementation)
            model = AutoModelForImageTextToText.from_pretrained(str(name_or_path), **kwargs)
        else:
            raise
    model.requires_grad_(False)
    model.eval()
    return model.to(device)


def add_face_token(processor: Any, model: torch.nn.Module) -> int:
    """Make sure the face placeholder token exists; grow the embedding table only when needed.

    The token's embedding row is never read (projected face vectors replace it), so its values do
    not matter and the result is the same every time the model is loaded.
    """
    tok = processor.tokenizer
    if FACE_TOKEN not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [FACE_TOKEN]}, replace_extra_special_tokens=False)
    token_id = tok.convert_tokens_to_ids(FACE_TOKEN)
    rows = model.get_input_embeddings().weight.shape[0]
    if token_id >= rows:
        model.resize_token_embeddings(token_id + 1, mean_resizing=False)
    return int(token_id)


def image_token_ids(model: torch.nn.Module) -> set[int]:
    """Token ids that stand for image patches in this backbone's sequences."""
    cfg = model.config
    ids = {getattr(cfg, k, None) for k in ("image_token_id", "image_token_index", "video_token_id")}
    return {int(i) for i in ids if i is not None}
