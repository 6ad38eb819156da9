"""Clips -> :class:`~.model.VideoFeatures`: faces per key frame (in the decoding workers) and the frozen temporal
and portrait encoders (batched on the model's device). Nothing here is trained."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .config import VideoConfig
from .decode import Clip, Sampling
from .encoders import PortraitEncoder, TemporalEncoder
from .model import VideoFeatures


def sampling_for(vconfig: VideoConfig, temporal: TemporalEncoder | None) -> Sampling:
    clip_side = temporal.side if temporal is not None else 224
    return Sampling(num_key_frames=vconfig.num_key_frames, num_clip_frames=vconfig.num_clip_frames,
                    frame_side=vconfig.frame_side, clip_side=clip_side, limits=vconfig.limits)


@dataclass
class FaceTrack:
    """Per key frame: the main face's embedding (None: no face) and its detector score."""

    embeddings: list[np.ndarray | None]
    scores: list[float]


def detect_faces(clip: Clip, face_encoder: Any) -> FaceTrack:
    """Run the face pack on each key frame (call from the decoding workers: the encoder locks itself)."""
    if face_encoder is None:
        return FaceTrack([None] * len(clip.key_frames), [0.0] * len(clip.key_frames))
    infos = [face_encoder.analyze(f) for f in clip.key_frames]
    return FaceTrack([i.embedding for i in infos], [float(i.det_score) if i.has_face else 0.0 for i in infos])


class FeatureExtractor:
    """The frozen encoders of a video checkpoint, applied to decoded clips."""

    def __init__(self, vconfig: VideoConfig, temporal: TemporalEncoder | None, portrait: PortraitEncoder | None,
                 face_encoder: Any = None) -> None:
        self.vconfig, self.temporal, self.portrait, self.face_encoder = vconfig, temporal, portrait, face_encoder
        self.sampling = sampling_for(vconfig, temporal)

    def to(self, device: str | torch.device) -> FeatureExtractor:
        for enc in (self.temporal, self.portrait):
            if enc is not None:
                enc.to(device)
        return self

    def __call__(self, clips: Sequence[Clip], tracks: Sequence[FaceTrack]) -> list[VideoFeatures]:
        v = self.vconfig
        temporal = self.temporal([c.clip_frames for c in clips]).cpu() if v.uses("temporal") else None
        out = []
        for i, (clip, track) in enumerate(zip(clips, tracks)):
            portrait = None
            if v.uses("portrait"):
                portrait = self.portrait(_same_size(clip.key_frames)).cpu()
            out.append(VideoFeatures(clip.name, [Image.fromarray(f) for f in clip.key_frames], clip.key_times,
                                     temporal[i] if temporal is not None else None, portrait,
                                     list(track.embeddings), list(track.scores)))
        return out


def _same_size(frames: list[np.ndarray]) -> np.ndarray:
    h = min(f.shape[0] for f in frames)
    w = min(f.shape[1] for f in frames)
    return np.stack([f[:h, :w] for f in frames])


def face_summary(feats: VideoFeatures) -> dict[str, Any]:
    """Per-frame face summary of a clip: key frames with a face, and the worst second (the first key frame with no
    face; else the one whose face is least like the clip's mean face — identity drift — or least confidently
    detected on a tie)."""
    n = len(feats.faces)
    found = [i for i, e in enumerate(feats.faces) if e is not None]
    summary: dict[str, Any] = {"faces": len(found), "face_frames": n, "worst_second": None}
    if not n:
        return summary
    missing = [i for i in range(n) if feats.faces[i] is None]
    if missing:
        worst = missing[0]
    else:
        embs = np.stack([feats.faces[i] for i in found]).astype(np.float32)
        mean = embs.mean(0)
        mean /= max(float(np.linalg.norm(mean)), 1e-12)
        sims = embs @ mean
        worst = found[int(np.lexsort((np.asarray(feats.face_scores)[found], sims))[0])]
    summary["worst_second"] = round(float(feats.key_times[worst]), 3)
    return summary
