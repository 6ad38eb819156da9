"""``fiqa_train_config.json``: the settings of one ViT-FIQA training run (each field is a ``feval fiqa train``
option)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..model.config import read_json_config, write_json_config
from .config import VIT_PRESETS
from .labels import MARGINS

FIQA_TRAIN_CONFIG_NAME = "fiqa_train_config.json"
PRESETS = tuple(VIT_PRESETS)
PRECISIONS = ("fp32", "bf16")
_RUN_ONLY = ("resume", "stop_after", "progress")
"""Fields that may change between an interrupted run and its resumption."""


@dataclass
class FIQATrainConfig:
    """One ViT-FIQA training run: identity head (margin softmax) + quality head on CR labels."""

    data: str = field(metadata={"help": "identity folders: DATA/<identity>/<image> (CASIA-WebFace / MS1MV2 layout)"})
    out: str = field(metadata={"help": "run folder: aligned faces, state, log, and the trained model"})
    init: str | None = field(default=None, metadata={
        "help": "ViT-FIQA folder to start from (e.g. from `feval fiqa import`); default: random init"})
    preset: str = field(default="vit_t", metadata={"help": "arcface_torch ViT shapes (ignored with --init)"})
    embed_dim: int | None = field(default=None, metadata={"help": "override the preset's token width"})
    depth: int | None = field(default=None, metadata={"help": "override the preset's number of blocks"})
    num_heads: int | None = field(default=None, metadata={"help": "override the preset's number of heads"})
    num_features: int = field(default=512, metadata={"help": "identity embedding size (ignored with --init)"})
    margin: str = field(default="arcface", metadata={"help": "identity loss: arcface (m=0.5) or cosface (m=0.35)"})
    margin_value: float | None = field(default=None, metadata={"help": "the margin m (default per --margin)"})
    scale: float = field(default=64.0, metadata={"help": "logit scale s of the margin softmax"})
    labels: str | None = field(default=None, metadata={
        "help": "JSON Lines of quality labels on 0-100 per image (e.g. `feval fiqa label`): the quality head learns "
                "them instead of the CR label; images without one add no quality loss"})
    label_key: str = field(default="mr_label", metadata={"help": "the column of --labels to learn"})
    alpha: float = field(default=10.0, metadata={"help": "weight of the quality loss (SmoothL1 to the CR label)"})
    freeze_recognizer: bool = field(default=False, metadata={
        "help": "train only the quality token, quality head and class centres (needs --init)"})
    patches_see_quality: bool = field(default=True, metadata={
        "help": "patch tokens attend to the quality token (paper); --no-patches-see-quality keeps the embeddings "
                "of the recognizer unchanged"})
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_fraction: float = field(default=0.05, metadata={"help": "share of steps with a linear warm-up"})
    batch_size: int = 128
    epochs: int = 20
    max_steps: int | None = field(default=None, metadata={"help": "optimizer steps (default: epochs x batches)"})
    drop_path: float = field(default=0.1, metadata={"help": "stochastic depth rate (arcface_torch ViTs: 0.1)"})
    mask_ratio: float = field(default=0.1, metadata={"help": "patch tokens masked in training (arcface_torch: 0.1)"})
    flip: bool = field(default=True, metadata={"help": "random horizontal flips"})
    max_grad_norm: float = 5.0
    precision: str = "fp32"
    seed: int = 0
    face_pack: str = field(default="buffalo_l", metadata={"help": "insightface pack that detects and aligns faces"})
    face_root: str | None = field(default=None, metadata={"help": "folder holding models/<pack>"})
    det_size: int = 640
    det_thresh: float = 0.5
    log_every: int = 10
    save_every: int = 200
    stop_after: int | None = field(default=None, metadata={"help": "stop after this many steps (resume later)"})
    resume: bool = field(default=False, metadata={"help": "continue the interrupted run in --out"})
    progress: bool = True

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.margin not in MARGINS:
            raise ConfigError(f"margin must be one of {', '.join(MARGINS)}, got {self.margin!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("lr", "scale", "alpha", "weight_decay", "max_grad_norm", "drop_path", "mask_ratio",
                     "warmup_fraction", "det_thresh") + (("margin_value",) if self.margin_value is not None else ()):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.lr <= 0 or self.scale <= 0:
            raise ConfigError(f"lr and scale must be > 0, got {self.lr} and {self.scale}")
        if self.drop_path >= 1 or self.mask_ratio >= 1 or self.warmup_fraction >= 1:
            raise ConfigError("drop_path, mask_ratio and warmup_fraction must be < 1")
        for name in ("batch_size", "epochs", "log_every", "save_every", "num_features"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "stop_after", "embed_dim", "depth", "num_heads"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name} must be >= 1 when given, got {v}")
        if self.freeze_recognizer and not self.init:
            raise ConfigError("freeze_recognizer needs a trained recognizer to freeze: pass --init FOLDER (a "
                              "ViT-FIQA folder, e.g. from `feval fiqa import`)")

    def save(self, folder: Path) -> None:
        write_json_config(Path(folder) / FIQA_TRAIN_CONFIG_NAME, dataclasses.asdict(self))

    @classmethod
    def load(cls, folder: Path) -> FIQATrainConfig:
        # keys another feval wrote are dropped (runs stay resumable across versions)
        return read_json_config(cls, Path(folder) / FIQA_TRAIN_CONFIG_NAME, what="a ViT-FIQA training config",
                                ignore_unknown=True,
                                fix="; delete the run folder to start over")

    def check_resume(self, folder: Path) -> None:
        """Refuse to resume a run with other settings than the ones that started it."""
        saved = FIQATrainConfig.load(folder)
        diff = [f"{f.name} {getattr(saved, f.name)!r} -> {getattr(self, f.name)!r}"
                for f in dataclasses.fields(self) if f.name not in _RUN_ONLY
                and getattr(saved, f.name) != getattr(self, f.name)]
        if diff:
            raise ConfigError(f"--resume with other settings than the run in {folder} ({'; '.join(diff)}); resume "
                              f"with the settings in its {FIQA_TRAIN_CONFIG_NAME}, or start a new run")

    def vit_shapes(self) -> dict[str, Any]:
        shapes = dict(VIT_PRESETS[self.preset])
        for name in ("embed_dim", "depth", "num_heads"):
            if getattr(self, name) is not None:
                shapes[name] = getattr(self, name)
        return {**shapes, "num_features": self.num_features}
