"""Sampling a clip from a :class:`~.sources.VideoSource`: key frames for the spatial, portrait and face branches
and a denser clip for the temporal encoder, both uniform in time.

Files are decoded with PyAV as a stream: frames go by one at a time and only the sampled ones are converted
(already resized), so memory does not grow with the clip's length. Limits are checked from the container's header
before decoding; variable frame rate and truncation are found while the stream goes by.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..errors import FEvalError
from ..inputs.decode import to_rgb_array
from .config import VideoLimits
from .sources import DEFAULT_FPS, VideoInputError, VideoSource, comfy_file, frame_files

REENCODE = "re-encode it, e.g. `ffmpeg -i IN -vf fps=25 -c:v libx264 OUT.mp4`"


@dataclass
class Clip:
    """What the model sees of one video."""

    name: str
    key_frames: list[np.ndarray]  # [H, W, 3] uint8, long side <= frame_side
    key_times: list[float]  # seconds from the start
    clip_frames: np.ndarray  # [T, h, w, 3] uint8, short side == clip_side
    fps: float
    duration: float
    num_frames: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sampling:
    """How many frames each branch gets and at which size."""

    num_key_frames: int = 8
    num_clip_frames: int = 16
    frame_side: int = 448
    clip_side: int = 224
    limits: VideoLimits = field(default_factory=VideoLimits)


def uniform_times(duration: float, n: int) -> list[float]:
    """``n`` instants at the centres of ``n`` equal slices of ``[0, duration)``."""
    return [(i + 0.5) * duration / n for i in range(n)]


def load_clip(source: VideoSource, sampling: Sampling) -> Clip:
    """Decode and sample one video; raises :class:`VideoInputError` with the reason and what to do."""
    try:
        if source.kind == "file":
            return _from_file(source, sampling)
        if source.kind == "frames":
            return _from_folder(source, sampling)
        if source.kind == "comfy":
            return _from_comfy(source, sampling)
        return _from_array(source, sampling)
    except FEvalError as exc:
        if isinstance(exc, VideoInputError):
            raise
        raise VideoInputError(f"{source.name}: {exc}") from exc


# -- files ----------------------------------------------------------------------------------------
def _open(path: str) -> Any:
    import av

    if not os.path.exists(path):
        raise VideoInputError(f"{path}: no such file; check the path (feval does not download URLs)")
    if os.path.getsize(path) == 0:
        raise VideoInputError(f"{path}: the file is empty (0 bytes); re-export the video")
    try:
        return av.open(path, metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise VideoInputError(f"{path}: not a readable video ({type(exc).__name__}: {exc}); the file is corrupt, "
                              f"truncated or not a video: {REENCODE}") from exc


def _header(container: Any, path: str, limits: VideoLimits) -> tuple[Any, float, float]:
    """The video stream, its frame rate and duration (seconds, from the header), after the limit checks."""
    if not container.streams.video:
        what = "audio only" if container.streams.audio else "no streams"
        raise VideoInputError(f"{path}: has no video stream ({what}); pass a file with picture")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > limits.max_pixels:
        raise VideoInputError(f"{path}: frames are {width}x{height}, over the limit of {limits.max_pixels} pixels; "
                              "downscale it first (ffmpeg -vf scale=-2:1080) or raise limits.max_pixels")
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else DEFAULT_FPS
    duration = 0.0
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000
    if duration > limits.max_seconds:
        raise VideoInputError(f"{path}: {duration:.0f} s long, over the limit of {limits.max_seconds:.0f} s; cut it "
                              "into shorter clips or raise limits.max_seconds")
    if duration * fps > limits.max_frames:
        raise VideoInputError(f"{path}: about {duration * fps:.0f} frames, over the limit of {limits.max_frames}; "
                              "cut it or raise limits.max_frames")
    return stream, fps, duration


def _from_file(source: VideoSource, sampling: Sampling) -> Clip:
    import av

    path = os.fspath(source.source)
    container = _open(path)
    try:
        stream, fps, duration = _header(container, path, sampling.limits)
        stream.thread_type = "AUTO"
        if duration <= 0:
            duration = _demux_duration(container, stream, path)
            container.seek(0)
        picker = _StreamPicker(duration, fps, sampling, path)
        try:
            for frame in container.decode(stream):
                picker.feed(frame)
        except av.FFmpegError as exc:
            if not picker.count:
                raise VideoInputError(f"{path}: no frame could be decoded ({exc}); the file is corrupt: "
                                      f"{REENCODE}") from exc
            picker.broken = f"{type(exc).__name__}: {exc}"
        return picker.finish(source.name)
    finally:
        container.close()


def _demux_duration(container: Any, stream: Any, path: str) -> float:
    """Duration from the packets' timestamps when the header has none (some webm/mkv files)."""
    last, step = None, 0.0
    for packet in container.demux(stream):
        if packet.pts is not None and packet.time_base is not None:
            t = float(packet.pts * packet.time_base)
            last = t if last is None else max(last, t)
            if packet.duration:
                step = float(packet.duration * packet.time_base)
    if last is None:
        raise VideoInputError(f"{path}: the video stream has no frames; re-export the video")
    return last + step


class _StreamPicker:
    """Receives decoded frames in order and keeps only the sampled ones, converted and resized."""

    def __init__(self, duration: float, fps: float, sampling: Sampling, name: str) -> None:
        self.s, self.name, self.fps, self.duration = sampling, name, fps, duration
        half = 0.5 / max(fps, 1e-6)
        self.key_targets = [t - half for t in uniform_times(duration, sampling.num_key_frames)]
        self.clip_targets = [t - half for t in uniform_times(duration, sampling.num_clip_frames)]
        self.keys: list[np.ndarray] = []
        self.key_times: list[float] = []
        self.clip: list[np.ndarray] = []
        self.count, self.start, self.last, self.intervals = 0, None, None, []
        self.broken: str | None = None

    def feed(self, frame: Any) -> None:
        t = float(frame.time) if frame.time is not None else self.count / self.fps
        if self.start is None:
            self.start = t
        t -= self.start
        if self.last is not None:
            self.intervals.append(t - self.last)
        self.last = t
        self.count += 1
        if self.count > self.s.limits.max_frames:
            raise VideoInputError(f"{self.name}: more than {self.s.limits.max_frames} frames; cut it or raise "
                                  "limits.max_frames")
        while len(self.keys) < len(self.key_targets) and t >= self.key_targets[len(self.keys)]:
            self.keys.append(_frame_rgb(frame, self.s.frame_side, long_side=True))
            self.key_times.append(t)
        while len(self.clip) < len(self.clip_targets) and t >= self.clip_targets[len(self.clip)]:
            self.clip.append(_frame_rgb(frame, self.s.clip_side, long_side=False))

    def finish(self, name: str) -> Clip:
        if not self.count:
            promised = f"truncated or corrupt: the header promises {self.duration:.2f} s" if self.duration else "empty"
            raise VideoInputError(f"{name}: no frame could be decoded ({promised}); re-download or re-export it")
        self._check_rate(name)
        end = (self.last or 0.0) + 1.0 / self.fps
        missing = len(self.keys) < len(self.key_targets) or len(self.clip) < len(self.clip_targets)
        if self.broken or (missing and end < 0.9 * self.duration):
            why = f" ({self.broken})" if self.broken else ""
            raise VideoInputError(f"{name}: truncated: frames stop at {end:.2f} s of the {self.duration:.2f} s the "
                                  f"header promises{why}; re-download it or {REENCODE}")
        while len(self.keys) < len(self.key_targets):  # timestamps end a little early: repeat the last frame
            self.keys.append(self.keys[-1] if self.keys else _last_or_fail(self.clip, name))
            self.key_times.append(self.last or 0.0)
        while len(self.clip) < len(self.clip_targets):
            self.clip.append(self.clip[-1] if self.clip else _resize(self.keys[-1], self.s.clip_side, False))
        return Clip(name, self.keys, self.key_times, _stack(self.clip), self.fps, self.duration, self.count)

    def _check_rate(self, name: str) -> None:
        if len(self.intervals) < 3:
            return
        gaps = np.asarray(self.intervals)
        median = float(np.median(gaps))
        if median <= 0:
            raise VideoInputError(f"{name}: frame timestamps do not increase; {REENCODE}")
        off = np.abs(gaps - median) > self.s.limits.vfr_tolerance * median
        if off.mean() > 0.02:
            raise VideoInputError(f"{name}: variable frame rate (frame intervals from {gaps.min() * 1000:.1f} to "
                                  f"{gaps.max() * 1000:.1f} ms); sampling by time would mix slow and fast parts: "
                                  f"{REENCODE}")


def _last_or_fail(frames: list[np.ndarray], name: str) -> np.ndarray:
    if not frames:
        raise VideoInputError(f"{name}: no frame could be sampled; re-export the video")
    return frames[-1]


def _frame_rgb(frame: Any, side: int, *, long_side: bool) -> np.ndarray:
    w, h = frame.width, frame.height
    scale = side / (max(w, h) if long_side else min(w, h))
    if long_side:
        scale = min(scale, 1.0)
    nw, nh = max(2, int(round(w * scale))), max(2, int(round(h * scale)))
    return frame.to_ndarray(format="rgb24", width=nw, height=nh)


def _resize(frame: np.ndarray, side: int, long_side: bool) -> np.ndarray:
    h, w = frame.shape[:2]
    scale = side / (max(w, h) if long_side else min(w, h))
    if long_side:
        scale = min(scale, 1.0)
    size = (max(2, int(round(w * scale))), max(2, int(round(h * scale))))
    if size == (w, h):
        return np.ascontiguousarray(frame)
    return np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR))


def _stack(frames: list[np.ndarray]) -> np.ndarray:
    h = min(f.shape[0] for f in frames)
    w = min(f.shape[1] for f in frames)
    return np.stack([f[:h, :w] for f in frames])


# -- frame folders and arrays ----------------------------------------------------------------------
def _from_indexed(name: str, n: int, fps: float, get: Any, sampling: Sampling) -> Clip:
    """Sample a clip from ``n`` frames where ``get(i)`` gives frame ``i`` as [H, W, 3] uint8."""
    if n == 0:
        raise VideoInputError(f"{name}: no frames; pass at least one frame")
    if n > sampling.limits.max_frames:
        raise VideoInputError(f"{name}: {n} frames, over the limit of {sampling.limits.max_frames}; cut it")
    duration = n / fps
    if duration > sampling.limits.max_seconds:
        raise VideoInputError(f"{name}: {duration:.0f} s at {fps:g} fps, over the limit of "
                              f"{sampling.limits.max_seconds:.0f} s; cut it")
    key_idx = [min(n - 1, int(t * fps)) for t in uniform_times(duration, sampling.num_key_frames)]
    clip_idx = [min(n - 1, int(t * fps)) for t in uniform_times(duration, sampling.num_clip_frames)]
    cache: dict[int, np.ndarray] = {}

    def frame(i: int) -> np.ndarray:
        if i not in cache:
            arr = get(i)
            if arr.shape[0] * arr.shape[1] > sampling.limits.max_pixels:
                raise VideoInputError(f"{name}: frames are {arr.shape[1]}x{arr.shape[0]}, over the limit of "
                                      f"{sampling.limits.max_pixels} pixels; downscale them")
            cache[i] = arr
        return cache[i]

    keys = [_resize(frame(i), sampling.frame_side, True) for i in key_idx]
    clip = _stack([_resize(frame(i), sampling.clip_side, False) for i in clip_idx])
    return Clip(name, keys, [i / fps for i in key_idx], clip, fps, duration, n)


def _from_folder(source: VideoSource, sampling: Sampling) -> Clip:
    files = frame_files(source.source)
    fps = float(source.fps or DEFAULT_FPS)
    return _from_indexed(source.name, len(files), fps, lambda i: to_rgb_array(files[i]), sampling)


def _from_comfy(source: VideoSource, sampling: Sampling) -> Clip:
    """A ComfyUI ``VIDEO``: its file streamed when it has one, else its decoded components. Whatever ComfyUI's
    decoder raises (corrupt, truncated, audio only) becomes this video's error, not the graph's."""
    video = source.source
    try:
        path = comfy_file(video)
        if path is not None:
            return _from_file(VideoSource("file", path, source.name), sampling)
        comps = video.get_components()
    except VideoInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this video's error row, with its reason
        raise VideoInputError(f"{source.name}: the VIDEO could not be decoded ({type(exc).__name__}: {exc}); the "
                              f"file is corrupt, truncated or has no picture: {REENCODE}") from exc
    images = getattr(comps, "images", None)
    if images is None:
        raise VideoInputError(f"{source.name}: the VIDEO has no frames (audio only?); connect a video with picture")
    rate = getattr(comps, "frame_rate", None)
    try:
        rate = float(rate) if rate else None
    except (TypeError, ValueError):
        rate = math.nan
    return _from_array(VideoSource("array", images, source.name, rate or source.fps), sampling)


def _array_layout(name: str, data: Any, limits: VideoLimits) -> tuple[int, bool]:
    """Frame count and whether channels come last, from the shape alone (nothing is converted yet)."""
    shape = tuple(int(s) for s in getattr(data, "shape", ()))
    if len(shape) != 4 or (shape[-1] not in (1, 3, 4) and shape[1] not in (1, 3, 4)):
        hint = "; for several clips pass a list of clips" if len(shape) == 5 else ""
        raise VideoInputError(f"{name}: a clip must be [T,H,W,C] or [T,C,H,W] with C in 1, 3, 4; got shape "
                              f"{list(shape)}{hint}")
    channels_last = shape[-1] in (1, 3, 4)
    h, w = (shape[1], shape[2]) if channels_last else (shape[2], shape[3])
    if h < 2 or w < 2:
        raise VideoInputError(f"{name}: frames are {w}x{h} pixels; pass frames of at least 2x2")
    if h * w > limits.max_pixels:
        raise VideoInputError(f"{name}: frames are {w}x{h}, over the limit of {limits.max_pixels} pixels; "
                              "downscale them first or raise limits.max_pixels")
    return shape[0], channels_last


def _from_array(source: VideoSource, sampling: Sampling) -> Clip:
    data = source.source
    n, channels_last = _array_layout(source.name, data, sampling.limits)
    fps = float(source.fps or DEFAULT_FPS)
    if not math.isfinite(fps) or fps <= 0:
        raise VideoInputError(f"{source.name}: frame rate must be a positive number, got {source.fps!r}")

    def get(i: int) -> np.ndarray:
        f = data[i]
        if not channels_last:
            f = f.permute(1, 2, 0) if hasattr(f, "permute") else np.moveaxis(f, 0, -1)
        try:
            if hasattr(f, "detach"):
                f = f.detach().cpu().float().numpy() if f.is_floating_point() else f.detach().cpu().numpy()
            f = np.asarray(f)
            if f.shape[-1] == 1:
                f = np.repeat(f, 3, axis=-1)
            return to_rgb_array(np.ascontiguousarray(f))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise VideoInputError(f"{source.name}: frame {i} cannot be read as a picture ({type(exc).__name__}: "
                                  f"{exc}); pass uint8 or float frames in [0, 1]") from exc

    return _from_indexed(source.name, n, fps, get, sampling)
