"""The frozen encoders' features of each clip on disk (``<run>/feature_cache/``), so that a resumed run, a later
epoch and a rerun do not decode the clip or run the encoders again.

One safetensors file per clip holds what the frozen parts produced: the decoded key frames (uint8, the spatial
branch's input: the vision tower is frozen but the backbone's vision projector after it trains, so its output is
not cached), the key frames' times, the temporal encoder's and the segmenter's features and the face pack's
per-frame embeddings and detector scores. The file's name is a hash of the clip (path, size and modification time
of the file, or of each frame of a frame folder) and of everything that shapes its features (the sampling, the
branches, the encoders' folders, the face pack). A changed clip or setting misses the cache; nothing is ever
reused for a different input. Arrays have no path and are not cached here (a training run keeps them in a
temporary folder, :mod:`~feval_core.video.store`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError

from .config import VideoConfig
from .model import VideoFeatures
from .sources import VideoSource, frame_files

logger = logging.getLogger(__name__)

CACHE_DIR = "feature_cache"
CACHE_FORMAT = 1


def _stat(path: str | os.PathLike[str]) -> list[Any]:
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def _folder_fingerprint(name: str) -> list[Any]:
    """A model folder: its files' names, sizes and times (new weights under the same path miss the cache)."""
    path = Path(name).expanduser()
    if not path.is_dir():
        return [name]  # a hub id: its revision is what the hub's cache holds
    return [_stat(p) for p in sorted(path.rglob("*")) if p.is_file()]


@dataclass
class FeatureCache:
    """Per-clip features of one encoder setting, in ``folder``; ``hits`` / ``stored`` count this process's use."""

    folder: Path
    setting: str  # JSON of everything that shapes the features

    hits: int = 0
    stored: int = 0

    @classmethod
    def for_run(cls, run: str | Path, vconfig: VideoConfig, face: dict[str, Any] | None) -> FeatureCache:
        """The cache of a run folder for these encoders (``face``: the face pack's settings, None without it)."""
        setting = {"format": CACHE_FORMAT, "video": vconfig.to_dict(), "face": face,
                   "temporal": _folder_fingerprint(vconfig.temporal_model) if vconfig.uses("temporal") else None,
                   "portrait": _folder_fingerprint(vconfig.portrait_model) if vconfig.uses("portrait") else None}
        return cls(Path(run) / CACHE_DIR, json.dumps(setting, sort_keys=True, default=str))

    def key(self, source: VideoSource) -> str | None:
        """The clip's cache key, or None for a source that cannot be keyed (arrays, missing files)."""
        try:
            if source.kind == "file":
                clip: Any = _stat(source.source)
            elif source.kind == "frames":
                clip = [source.fps, *[_stat(f) for f in frame_files(source.source)]]
            else:
                return None
        except OSError:
            return None  # decoding reports the error
        return hashlib.sha256(json.dumps([clip, self.setting], default=str).encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def get(self, source: VideoSource) -> VideoFeatures | None:
        """The cached features of ``source`` (named as it is now), or None on a miss or an unreadable file."""
        key = self.key(source)
        if key is None or not self.path(key).is_file():
            return None
        try:
            feats = read_features(self.path(key), source.name)
        except (OSError, ValueError, KeyError, json.JSONDecodeError, SafetensorError) as exc:
            logger.warning("feature cache: %s is unreadable (%s); computing the clip again", self.path(key), exc)
            return None
        self.hits += 1
        return feats

    def put(self, source: VideoSource, feats: VideoFeatures) -> None:
        key = self.key(source)
        if key is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        write_features(self.path(key), feats)
        self.stored += 1


def is_entry(path: Path) -> bool:
    """Whether ``path`` is a whole entry of this format (reads the header only; safetensors refuses a file whose
    length does not match its header, so a cut file is not one)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            return (fh.metadata() or {}).get("format") == str(CACHE_FORMAT)
    except Exception as exc:  # noqa: BLE001 - OSError, or safetensors' own SafetensorError for a bad header
        logger.debug("feature cache: %s is not an entry (%s)", path, exc)
        return False


def write_features(path: Path, f: VideoFeatures) -> None:
    """Write one clip's features atomically (a temporary file, then a rename): a killed run, or another process
    writing the same entry, never leaves a half-written one."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {"key_times": torch.tensor(f.key_times, dtype=torch.float64),
                                        "face_scores": torch.tensor(f.face_scores, dtype=torch.float32)}
    for i, im in enumerate(f.key_frames):
        tensors[f"key_frame.{i}"] = torch.from_numpy(np.array(im, dtype=np.uint8))
    if f.temporal is not None:
        tensors["temporal"] = f.temporal.detach().float().contiguous().cpu()
    if f.portrait is not None:
        tensors["portrait"] = f.portrait.detach().float().contiguous().cpu()
    for i, e in enumerate(f.faces):
        if e is not None:
            tensors[f"face.{i}"] = torch.from_numpy(np.array(e, dtype=np.float32))
    meta = {"format": str(CACHE_FORMAT), "frames": str(len(f.key_frames)), "faces": str(len(f.faces))}
    tmp = path.with_name(path.name + f".{socket.gethostname()}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def read_features(path: Path, name: str) -> VideoFeatures:
    """One clip's features as :func:`write_features` wrote them, named ``name``."""
    from PIL import Image
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata() or {}
        if meta.get("format") != str(CACHE_FORMAT):
            raise ValueError(f"cache format {meta.get('format')!r}, not {CACHE_FORMAT}")
        keys = set(fh.keys())
        frames = [Image.fromarray(fh.get_tensor(f"key_frame.{i}").numpy()) for i in range(int(meta["frames"]))]
        faces = [fh.get_tensor(f"face.{i}").numpy() if f"face.{i}" in keys else None for i in range(int(meta["faces"]))]
        return VideoFeatures(name, frames, fh.get_tensor("key_times").tolist(),
                             fh.get_tensor("temporal") if "temporal" in keys else None,
                             fh.get_tensor("portrait") if "portrait" in keys else None,
                             faces, fh.get_tensor("face_scores").tolist())
