"""``video_config.json``: what makes a feval checkpoint a video model (FVQ-Rater), validated on load.

A video checkpoint is an image checkpoint (``feval_config.json``, ``projectors.safetensors``,
``adapters/quality/``) plus this file, ``video_projectors.safetensors`` (temporal and portrait projectors) and,
usually, the temporal encoder and portrait segmenter folders.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..model.config import MAX_STRING, VIDEO_CONFIG_NAME, read_json_config, write_json_config

__all__ = ["VIDEO_CONFIG_NAME", "VIDEO_PROJECTORS_NAME", "VideoConfig", "VideoLimits", "is_video_checkpoint"]
VIDEO_PROJECTORS_NAME = "video_projectors.safetensors"
VIDEO_FORMAT_VERSION = 1
BRANCHES = ("spatial", "temporal", "portrait", "face")
"""The four feature kinds of FVQ-Rater: key frames through the VLM's vision tower, a video network over a denser
clip, the matted person (segmentation model), per-frame face embeddings (the face pack)."""


@dataclass
class VideoLimits:
    """Inputs beyond these get an error row instead of being decoded."""

    max_seconds: float = field(default=600.0, metadata={"help": "longest clip scored (seconds)"})
    max_frames: int = field(default=36_000, metadata={"help": "most frames in a clip"})
    max_pixels: int = field(default=3840 * 2160, metadata={"help": "largest frame (width x height)"})
    vfr_tolerance: float = field(default=0.25, metadata={
        "help": "frame intervals may differ from the median by this fraction before a clip counts as variable "
                "frame rate (an error: re-encode at a constant rate)"})

    def __post_init__(self) -> None:
        for name in ("max_seconds", "vfr_tolerance"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                raise ConfigError(f"limits.{name} must be a positive number, got {v!r}")
        for name in ("max_frames", "max_pixels"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"limits.{name} must be a positive integer, got {v!r}")


@dataclass
class VideoConfig:
    """The video parts of an FVQ-Rater checkpoint (the LMM itself is described by ``feval_config.json``)."""

    temporal_model: str = field(default="temporal", metadata={
        "help": "transformers video model (VideoMAE family): a folder inside the checkpoint, an absolute folder or a "
                "hub id"})
    portrait_model: str = field(default="portrait", metadata={
        "help": "transformers semantic-segmentation model (Segformer family) whose labels include a person"})
    portrait_labels: tuple[str, ...] = field(default=("person",), metadata={
        "help": "label names (the model's id2label) that together make the person matte"})
    branches: tuple[str, ...] = field(default=BRANCHES, metadata={"help": f"feature kinds used, from {BRANCHES}"})
    num_key_frames: int = field(default=8, metadata={"help": "frames sampled uniformly in time for the spatial, "
                                                             "portrait and face branches"})
    num_clip_frames: int = field(default=16, metadata={"help": "frames sampled uniformly in time for the temporal "
                                                               "encoder (its num_frames)"})
    temporal_tokens: int = field(default=4, metadata={"help": "LLM tokens of the temporal projector"})
    portrait_size: int = field(default=128, metadata={"help": "side of the square frame given to the segmenter"})
    frame_side: int = field(default=448, metadata={"help": "key frames are decoded at most this long side"})
    kind: str = field(default="video", metadata={"help": "always 'video': says this checkpoint scores videos"})
    limits: VideoLimits = field(default_factory=VideoLimits)
    format_version: int = VIDEO_FORMAT_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.limits, dict):
            self.limits = read_json_config(VideoLimits, self.limits, what="limits")
        if self.kind != "video":
            raise ConfigError(f"kind must be 'video', got {self.kind!r}")
        for name in ("temporal_model", "portrait_model"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip() or len(v) > MAX_STRING:
                raise ConfigError(f"{name} must name a model folder or hub id, got {v!r}")
            if not Path(v).is_absolute() and ".." in Path(v.replace("\\", "/")).parts:
                raise ConfigError(f"{name} {v!r} points outside the checkpoint; use an absolute path or a hub id")
        for name in ("portrait_labels", "branches"):
            v = getattr(self, name)
            if not isinstance(v, (list, tuple)) or not v or not all(isinstance(x, str) and x for x in v):
                raise ConfigError(f"{name} must be a non-empty list of names, got {v!r}")
            setattr(self, name, tuple(v))
        bad = [b for b in self.branches if b not in BRANCHES]
        if bad or len(set(self.branches)) != len(self.branches):
            raise ConfigError(f"branches must be distinct names from {BRANCHES}, got {list(self.branches)}")
        if "spatial" not in self.branches:
            raise ConfigError("branches must include 'spatial' (the key frames are what the VLM looks at)")
        for name, lo, hi in (("num_key_frames", 1, 64), ("num_clip_frames", 2, 512), ("temporal_tokens", 1, 64),
                             ("portrait_size", 32, 2048), ("frame_side", 28, 4096), ("format_version", 1, 1 << 30)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise ConfigError(f"{name} must be an integer in {lo}..{hi}, got {v!r}")
        if self.format_version > VIDEO_FORMAT_VERSION:
            raise ConfigError(f"video_config format_version {self.format_version} is newer than this feval reads "
                              f"({VIDEO_FORMAT_VERSION}); upgrade feval")

    def uses(self, branch: str) -> bool:
        return branch in self.branches

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["portrait_labels"], d["branches"] = list(self.portrait_labels), list(self.branches)
        return d

    def save(self, folder: str | Path) -> Path:
        return write_json_config(Path(folder) / VIDEO_CONFIG_NAME, self.to_dict())

    @classmethod
    def load(cls, folder: str | Path) -> VideoConfig:
        return read_json_config(cls, folder, what="a video config", name=VIDEO_CONFIG_NAME,
                                missing=f": a feval video checkpoint holds {VIDEO_CONFIG_NAME} (make one with "
                                "`feval make-tiny --video DIR` or `feval video train ...`)")


def is_video_checkpoint(folder: str | Path) -> bool:
    return (Path(folder) / VIDEO_CONFIG_NAME).is_file()
