"""``fiqa_config.json``: the one config of a saved ViT-FIQA model (recognizer shapes, heads, face pack, calibration)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..model.config import FaceEncoderConfig, read_json_config, write_json_config

FIQA_CONFIG_NAME = "fiqa_config.json"
FIQA_WEIGHTS_NAME = "model.safetensors"
FIQA_FORMAT_VERSION = 1
NORM_LAYERS = ("ln",)
QUANTILES = 101
"""Length of the calibration table: predicted quality at the 0th, 1st, ..., 100th percentile of training faces."""

VIT_PRESETS: dict[str, dict[str, int]] = {
    # arcface_torch's backbones/__init__.py: 112 px, patch 9 (144 patches), 512-d features, 8 heads
    "vit_t": {"embed_dim": 256, "depth": 12, "num_heads": 8},
    "vit_s": {"embed_dim": 512, "depth": 12, "num_heads": 8},
    "vit_b": {"embed_dim": 512, "depth": 24, "num_heads": 8},
    "vit_l": {"embed_dim": 768, "depth": 24, "num_heads": 8},
}


def _int_in(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")


def _num_in(name: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise ConfigError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")


@dataclass
class FIQAConfig:
    """Everything needed to rebuild a ViT-FIQA model around its saved weights, and to read its output as utility.

    The recognizer is arcface_torch's ``VisionTransformer`` (``img_size`` 112, ``patch_size`` 9, a ``num_features``
    embedding from the flattened patch tokens); ViT-FIQA adds a learnable quality token to the patch sequence and a
    regression head on it. ``utility_quantiles`` maps the head's raw output to 0-100 (see :mod:`.labels`).
    """

    embed_dim: int = field(default=512, metadata={"help": "token width (vit_s/vit_b: 512, vit_t: 256)"})
    depth: int = field(default=12, metadata={"help": "encoder blocks"})
    num_heads: int = field(default=8, metadata={"help": "attention heads"})
    img_size: int = field(default=112, metadata={"help": "aligned face crop side (ArcFace template: 112)"})
    patch_size: int = field(default=9, metadata={"help": "patch side (arcface_torch ViTs: 9 -> 12x12 patches)"})
    num_features: int = field(default=512, metadata={"help": "identity embedding size"})
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    norm_layer: str = "ln"
    quality_hidden: int = field(default=0, metadata={
        "help": "hidden width of the quality head (0: one linear layer on the quality token, as in ViT-FIQA)"})
    patches_see_quality: bool = field(default=True, metadata={
        "help": "patch tokens attend to the quality token (the paper's global attention); False keeps the "
                "recognizer's embeddings exactly those of the plain ViT"})
    utility_quantiles: list[float] | None = field(default=None, metadata={
        "help": f"{QUANTILES} raw qualities at the 0..100th percentiles of the training faces (utility = percentile)"})
    label: str = field(default="cr", metadata={"help": "what the quality head learned: 'cr' (certainty ratio), "
                                                      "'labels' (given labels / 100, e.g. MR-FIQA's) or 'none' "
                                                      "(imported recognizer, untrained head)"})
    face: FaceEncoderConfig = field(default_factory=FaceEncoderConfig)
    source: str = field(default="", metadata={"help": "where the recognizer weights came from (free text)"})
    version: int = FIQA_FORMAT_VERSION

    def __post_init__(self) -> None:
        _int_in("embed_dim", self.embed_dim, 8, 8192)
        _int_in("depth", self.depth, 1, 128)
        _int_in("num_heads", self.num_heads, 1, 128)
        _int_in("img_size", self.img_size, 16, 1024)
        _int_in("patch_size", self.patch_size, 1, 128)
        _int_in("num_features", self.num_features, 2, 8192)
        _int_in("quality_hidden", self.quality_hidden, 0, 8192)
        _num_in("mlp_ratio", self.mlp_ratio, 0.25, 16)
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")
        if self.patch_size > self.img_size:  # like arcface_torch's conv, a remainder of < 1 patch is cut off
            raise ConfigError(f"patch_size {self.patch_size} must not exceed img_size {self.img_size}")
        if self.norm_layer not in NORM_LAYERS:
            raise ConfigError(f"norm_layer must be one of {NORM_LAYERS} (arcface_torch's 'bn' ViTs are not "
                              f"supported), got {self.norm_layer!r}")
        if self.label not in ("cr", "none", "labels"):
            raise ConfigError(f"label must be 'cr', 'labels' or 'none', got {self.label!r}")
        for flag in ("qkv_bias", "patches_see_quality"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if isinstance(self.face, dict):
            self.face = read_json_config(FaceEncoderConfig, self.face, what="face")
        q = self.utility_quantiles
        if q is not None:
            if not isinstance(q, list) or len(q) != QUANTILES or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in q):
                raise ConfigError(f"utility_quantiles must be {QUANTILES} finite numbers or null")
            if any(b < a for a, b in zip(q, q[1:])):
                raise ConfigError("utility_quantiles must be non-decreasing (percentiles of the training faces)")
            self.utility_quantiles = [float(v) for v in q]
        if self.version != FIQA_FORMAT_VERSION:
            raise ConfigError(f"version {self.version!r} is not supported (this feval reads {FIQA_FORMAT_VERSION}); "
                              "upgrade feval")

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> FIQAConfig:
        """The shapes of arcface_torch's ``vit_t`` / ``vit_s`` / ``vit_b`` / ``vit_l``."""
        if name not in VIT_PRESETS:
            raise ConfigError(f"unknown ViT preset {name!r}; choose from {', '.join(VIT_PRESETS)}")
        return cls(**{**VIT_PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, folder: str | Path) -> Path:
        return write_json_config(Path(folder) / FIQA_CONFIG_NAME, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> FIQAConfig:
        """Read and validate ``fiqa_config.json`` (size-limited plain JSON; unknown keys refused)."""
        config = read_json_config(cls, path, what="a ViT-FIQA config", name=FIQA_CONFIG_NAME,
                                  missing=f": a ViT-FIQA model folder holds {FIQA_CONFIG_NAME} and "
                                  f"{FIQA_WEIGHTS_NAME} (write one with `feval fiqa train`, `feval fiqa import` or "
                                  "`feval make-tiny --fiqa`)",
                                  unknown_hint="was it written by a newer feval?")
        if config.face.root and ".." in Path(config.face.root).parts:
            raise ConfigError(f"{path}: face.root {config.face.root!r} may not climb out of the model folder with "
                              "'..'; give a folder inside it or an absolute path")
        return config
