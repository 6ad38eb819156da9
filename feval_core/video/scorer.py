"""``VideoScorer``: ``video_quality`` (0-100) and a per-frame face summary for each face video.

Decoding and face detection run in worker threads ahead of the model (:class:`~feval_core.inputs.prefetch.
Prefetcher`); the frozen encoders and the LMM run batched in the calling thread. A video that cannot be read gets
a row with its error and the others are scored; :meth:`VideoScorer.score_to_file` appends JSON Lines and resumes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ..inputs.prefetch import Prefetcher, chunked
from ..inputs.results import ResultsWriter, read_results
from .checkpoint import VideoParts, load_video_checkpoint, resolve_video_checkpoint
from .decode import load_clip
from .features import detect_faces, face_summary
from .sources import VideoInputError, VideoSource, expand_videos

logger = logging.getLogger(__name__)

KEY = "image"
"""Results rows name their input under the same key as image rows (``feval score`` mixes both)."""


class VideoScorer:
    """Scores face videos with a video checkpoint (FVQ-Rater on the F-Eval engine)."""

    def __init__(self, parts: VideoParts, *, workers: int | None = None) -> None:
        self.model, self.extractor, self.folder = parts.model, parts.extractor, parts.folder
        self.workers = workers
        self.last_prefetch: Any = None  # the last run's PrefetchStats (wait_s: time the model waited for clips)

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, face_root: str | Path | None = None,
                        workers: int | None = None, merge_vision: bool = True, **hub_kwargs: Any) -> VideoScorer:
        """Load a video checkpoint: a folder, or a hub id ``org/name`` (``snapshot_download`` of its files; with
        ``HF_HUB_OFFLINE=1`` from the cache only; ``cache_dir`` etc. in ``hub_kwargs``). Remote code is never
        run. An image checkpoint is refused with what to use instead. ``merge_vision`` (default): the vision
        expert is merged into the tower, which runs as a plain tower; False keeps it as a LoRA branch."""
        from ..model.config import FEvalConfig
        from ..scoring.scorer import _load_face_encoder
        from .config import VideoConfig

        folder = resolve_video_checkpoint(path_or_id, **hub_kwargs)
        face = None
        if VideoConfig.load(folder).uses("face"):
            face = _load_face_encoder(FEvalConfig.load(folder), folder, str(device), face_root)
        parts = load_video_checkpoint(folder, device=device, dtype=dtype, face_encoder=face, merge_vision=merge_vision,
                                      **hub_kwargs)
        return cls(parts, workers=workers)

    @property
    def vconfig(self) -> Any:
        return self.model.vconfig

    def _prepare(self, source: VideoSource, state: Any = None) -> Any:
        try:
            clip = load_clip(source, self.extractor.sampling)
            return clip, detect_faces(clip, self.extractor.face_encoder if self.vconfig.uses("face") else None)
        except VideoInputError as exc:
            return str(exc)

    def iter_records(self, videos: Any, *, fps: float | None = None, batch_size: int = 4,
                     skip: set[str] | None = None) -> Iterator[list[dict[str, Any]]]:
        """Rows in input order, one list per batch; ``skip``: names already scored (resuming)."""
        sources = [s for s in expand_videos(videos, fps=fps) if not skip or s.name not in skip]
        pre = Prefetcher(chunked(sources, batch_size), self._prepare, workers=self.workers)
        self.last_prefetch = pre.stats
        done = 0
        for chunk in pre:
            names = [s.name for s in sources[done:done + len(chunk)]]
            done += len(chunk)
            yield self._score_chunk(names, chunk)

    def _score_chunk(self, names: Sequence[str], chunk: Sequence[Any]) -> list[dict[str, Any]]:
        ok = [i for i, r in enumerate(chunk) if not isinstance(r, str)]
        rows: list[dict[str, Any]] = [{KEY: n, "video_quality": None, "faces": None, "face_frames": None,
                                       "worst_second": None, "error": r if isinstance(r, str) else None}
                                      for n, r in zip(names, chunk)]
        if not ok:
            return rows
        clips = [chunk[i][0] for i in ok]
        feats = self.extractor(clips, [chunk[i][1] for i in ok])
        with torch.no_grad():
            scores = self.model.scores(self.model.score_clips(feats)).float().cpu().tolist()
        for i, f, s, clip in zip(ok, feats, scores, clips):
            rows[i].update(face_summary(f) if self.vconfig.uses("face") else {})
            rows[i]["video_quality"] = round(float(s), 4) if math.isfinite(s) else None
            rows[i]["duration"], rows[i]["fps"] = round(clip.duration, 3), round(clip.fps, 3)
        return rows

    def score(self, videos: Any, *, fps: float | None = None, batch_size: int = 4) -> list[dict[str, Any]]:
        """One row per video: ``video_quality`` (0-100, None on error), ``faces`` (key frames with a face),
        ``face_frames``, ``worst_second``, ``duration``, ``fps``, ``error``."""
        return [r for rows in self.iter_records(videos, fps=fps, batch_size=batch_size) for r in rows]

    def score_to_file(self, videos: Any, out: str | Path, *, fps: float | None = None,
                      batch_size: int = 4) -> list[dict[str, Any]]:
        """Append rows to JSON Lines ``out``; rows already there are not scored again (resume after a kill)."""
        with ResultsWriter(out) as writer:
            for rows in self.iter_records(videos, fps=fps, batch_size=batch_size, skip=set(writer.done)):
                writer.write(rows)
        return read_results(out)


def score_videos(videos: Any, model: str | Path, **kwargs: Any) -> list[dict[str, Any]]:
    """One-line use: ``score_videos(["a.mp4", "b.webm"], "ckpt/")``."""
    return VideoScorer.from_pretrained(model).score(videos, **kwargs)
