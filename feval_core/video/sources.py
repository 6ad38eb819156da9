"""What users pass as videos -> :class:`VideoSource`: files, frame folders, ``[T,H,W,C]`` / ``[T,C,H,W]`` arrays
and tensors, ComfyUI IMAGE batches with a frame rate, and ComfyUI ``VIDEO`` objects."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FEvalError
from ..inputs.images import _is_image_name

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".webm", ".mov", ".mkv", ".avi", ".gif"})
DEFAULT_FPS = 25.0
"""Frame rate assumed for frame folders and arrays given without one."""


class VideoInputError(FEvalError, ValueError):
    """A video could not be read or sampled (unreadable, truncated, no frames, too long or large, variable rate)."""


@dataclass(frozen=True)
class VideoSource:
    """One video: ``kind`` is ``"file"``, ``"frames"`` (a folder of images), ``"array"`` ([T,H,W,C] uint8 or
    float in [0, 1], numpy or torch, or [T,C,H,W]) or ``"comfy"`` (a ComfyUI ``VIDEO`` object, decoded only when
    the clip is loaded, so a file it cannot decode becomes that video's error row); ``name`` is what its results
    row calls it."""

    kind: str
    source: Any
    name: str
    fps: float | None = None


def is_video_name(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def expand_videos(videos: Any, *, fps: float | None = None) -> list[VideoSource]:
    """Turn one input or a list of inputs into sources, in order. A folder holding video files gives each of them;
    a folder holding images is one clip of frames (sorted by name). A missing path is kept: its row gets the error.
    """
    if _is_batch(videos) or not isinstance(videos, (list, tuple)):
        videos = [videos]
    out: list[VideoSource] = []
    for i, obj in enumerate(videos):
        out.extend(_expand_one(obj, i, fps))
    return out


def _expand_one(obj: Any, index: int, fps: float | None) -> list[VideoSource]:
    if isinstance(obj, VideoSource):
        return [obj]
    if isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        if os.path.isdir(path):
            names = sorted(os.listdir(path))
            clips = [os.path.join(path, n) for n in names if is_video_name(n)]
            if clips:
                return [VideoSource("file", p, p) for p in clips]
            return [VideoSource("frames", path, path, fps)]
        return [VideoSource("file", path, path)]
    if hasattr(obj, "get_components"):  # ComfyUI VIDEO (comfy_api VideoInput): decoded in load_clip
        return [VideoSource("comfy", obj, f"<video {index}>", fps)]
    if _is_array(obj):  # any shape: one that is not a clip gets its error row from load_clip
        return [VideoSource("array", obj, f"<video {index}>", fps)]
    raise VideoInputError(f"video {index}: {type(obj).__name__} is not a video; pass a file path (mp4, webm, mov, "
                          "mkv, gif), a folder of frames, or a [T,H,W,C] array or tensor")


def _is_batch(obj: Any) -> bool:
    """An array or tensor with 4 dimensions: one clip of frames."""
    return _is_array(obj) and len(obj.shape) == 4


def _is_array(obj: Any) -> bool:
    """A numpy array or torch tensor (anything with ``shape`` and ``ndim``)."""
    return getattr(obj, "shape", None) is not None and hasattr(obj, "ndim")


def comfy_file(video: Any) -> str | None:
    """The file behind a ComfyUI ``VideoFromFile`` given by path and not trimmed, so that it can be streamed
    instead of decoded whole by ``get_components()`` (which holds every frame as float32); else None."""
    if type(video).__name__ != "VideoFromFile" or not hasattr(video, "get_stream_source"):
        return None
    trim = getattr(video, "get_active_trim_window", None)
    if trim is not None and tuple(trim()) != (0.0, 0.0):
        return None
    source = video.get_stream_source()
    return source if isinstance(source, str) and os.path.isfile(source) else None


def frame_files(folder: str) -> list[str]:
    """Image files of a frame folder, in name order."""
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if _is_image_name(n)]
