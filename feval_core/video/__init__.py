"""Face video quality (FVQ-Rater) on the F-Eval engine: ``video_quality`` (0-100) for a clip.

* :mod:`.config` — ``video_config.json`` (:class:`VideoConfig`: encoders, branches, frame counts, limits);
* :mod:`.sources`, :mod:`.decode` — videos as users pass them; streamed decoding with PyAV, key frames and a
  denser clip uniform in time, error rows for bad videos;
* :mod:`.encoders` — the frozen temporal encoder (VideoMAE family) and portrait segmenter (Segformer family);
* :mod:`.features` — clips -> features (faces per key frame, encoders), the per-frame face summary;
* :mod:`.model` — :class:`VideoLMM`: the image LMM plus temporal and portrait projectors;
* :mod:`.checkpoint` — the image checkpoint layout plus ``video_config.json`` and ``video_projectors.safetensors``;
* :mod:`.scorer` — :class:`VideoScorer` (rows, resumable JSON Lines);
* :mod:`.manifest`, :mod:`.train` — video manifests, the FVQ-20K importer, two-stage training and evaluation.

Sits above :mod:`feval_core.fiqa` (it reuses the image model, faces, inputs, scoring and training rooms) and below
:mod:`feval_core.testing`.
"""

from __future__ import annotations

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "VideoConfig": "config", "VideoScorer": "scorer", "score_videos": "scorer", "VideoLMM": "model",
    "VideoSource": "sources", "expand_videos": "sources", "VideoInputError": "sources", "load_clip": "decode",
    "Clip": "decode", "Sampling": "decode", "load_video_checkpoint": "checkpoint",
    "save_video_checkpoint": "checkpoint",
})
