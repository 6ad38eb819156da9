"""``feval fiqa import``: a public arcface_torch ViT state dict (``.pt``/``.pth``) -> a ViT-FIQA folder in safetensors.

This is the only place feval reads a PyTorch pickle, once, by the user's command: ``torch.load(...,
weights_only=True)`` unpickles tensors and plain containers only and refuses anything else (code, custom classes).
The recognizer's shapes are read off the tensors; its quality token and head start untrained (``label: "none"``),
so train them with ``feval fiqa train --init OUT [--freeze-recognizer]`` before trusting ``utility``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..model.config import FaceEncoderConfig
from .config import FIQAConfig

logger = logging.getLogger(__name__)

STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin")
_WRAPPERS = ("state_dict", "model", "backbone", "module")


def _unwrap(obj: Any, src: Path) -> dict[str, Any]:
    import torch

    for _ in range(3):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{src} is not a state dict of tensors (found {type(obj).__name__}); export the "
                              "recognizer's state_dict() with torch.save and import that")
    return {re.sub(r"^(module\.|backbone\.)", "", k): v for k, v in obj.items()}


def read_state_dict(src: str | Path) -> dict[str, Any]:
    """Tensors of a PyTorch state-dict file, loaded with ``weights_only=True`` (anything else is refused)."""
    import pickle

    import torch

    src = Path(src).expanduser()
    if not src.is_file():
        raise CheckpointError(f"{src}: no such file; give the recognizer's .pt/.pth state-dict file")
    if src.suffix.lower() not in STATE_DICT_SUFFIXES:
        raise CheckpointError(f"{src}: expected a PyTorch state dict ({', '.join(STATE_DICT_SUFFIXES)}); "
                              "safetensors models need no import")
    try:
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"refusing {src}: it is not a plain tensor state dict that loads with "
                              f"weights_only=True ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
                              "Re-save only model.state_dict() in a trusted environment") from exc
    return _unwrap(obj, src)


def config_from_state_dict(state: dict[str, Any], num_heads: int = 8, **overrides: Any) -> FIQAConfig:
    """The recognizer shapes of an arcface_torch ViT state dict (``num_heads`` cannot be read off the tensors)."""
    needed = ("patch_embed.proj.weight", "pos_embed", "feature.0.weight", "feature.2.weight")
    missing = [k for k in needed if k not in state]
    if missing:
        raise CheckpointError(f"not an arcface_torch ViT state dict: missing {missing} (this importer reads the "
                              "VisionTransformer of insightface's recognition/arcface_torch/backbones/vit.py)")
    if any(".norm1.bn." in k for k in state):
        raise CheckpointError("this ViT uses batch-norm token norms (norm_layer='bn'); only the layer-norm "
                              "arcface_torch ViTs (vit_t, vit_s, vit_b, vit_l) are supported")
    dim, _, patch, _ = state["patch_embed.proj.weight"].shape
    patches = state["pos_embed"].shape[1]
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    side = int(round(patches ** 0.5)) * patch
    img = side + (112 - side if 0 <= 112 - side < patch else 0)  # 112 px with patch 9 leaves 4 px unused
    return FIQAConfig(embed_dim=int(dim), depth=depth, num_heads=num_heads, img_size=img, patch_size=int(patch),
                      num_features=int(state["feature.2.weight"].shape[0]),
                      mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / dim,
                      qkv_bias="blocks.0.attn.qkv.bias" in state, label="none", **overrides)


def import_arcface_vit(src: str | Path, out: str | Path, *, num_heads: int = 8,
                       face: FaceEncoderConfig | None = None) -> Path:
    """Convert an arcface_torch ViT state dict into a ViT-FIQA folder (untrained quality head)."""
    import torch

    from .vit import ViTFIQA

    state = read_state_dict(src)
    config = config_from_state_dict(state, num_heads, face=face or FaceEncoderConfig(),
                                    source=f"imported from {Path(src).name} (arcface_torch ViT)")
    torch.manual_seed(0)
    model = ViTFIQA(config)
    state = {k: v for k, v in state.items() if not k.startswith("head")}  # a classifier saved with it is not needed
    try:
        model.vit.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{src} does not fit an arcface_torch ViT of the shapes read from it "
                              f"({str(exc).splitlines()[0]}); check --num-heads") from exc
    out = model.save_pretrained(out)
    logger.info("wrote %s: %d-d ViT (%d blocks, %d patches); the quality head is untrained", out, config.embed_dim,
                config.depth, config.num_patches)
    return out
