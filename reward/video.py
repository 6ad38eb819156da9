"""Rewards for face-video generators from ``video_quality`` (FVQ-Rater on the F-Eval engine).

* :func:`video_reward` — ``float32 [B]`` on 0..100 for a batch of clips (``[B,T,H,W,C]`` / ``[B,T,C,H,W]``
  arrays or tensors in [0, 1] or uint8, or a list of clips/files); a clip that cannot be scored gets ``nan_reward``;
* :func:`flow_grpo_video_reward` — the Flow-GRPO shape ``fn(videos, prompts, metadata) -> ({"video_quality": ...,
  "avg": ...}, {})`` with scores scaled by ``scale`` (0.01: 0..1 like Flow-GRPO's other rewards).

Scoring is :class:`feval_core.video.VideoScorer`; nothing here scores on its own. The default checkpoint comes from
``$FEVAL_VIDEO_REWARD_MODEL``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

VIDEO_MODEL_ENV = "FEVAL_VIDEO_REWARD_MODEL"


@functools.lru_cache(maxsize=2)
def _load(path: str, device: str) -> Any:
    from feval_core.video.scorer import VideoScorer

    return VideoScorer.from_pretrained(path, device=device)


def get_video_scorer(scorer: Any = None, device: str = "cpu") -> Any:
    if scorer is not None and not isinstance(scorer, (str, Path)):
        return scorer
    path = scorer or os.environ.get(VIDEO_MODEL_ENV)
    if not path:
        raise ValueError(f"no video checkpoint: pass scorer= (a VideoScorer or a folder) or set ${VIDEO_MODEL_ENV}")
    return _load(str(path), device)


def _clips(videos: Any) -> list[Any]:
    shape = getattr(videos, "shape", None)
    if shape is not None and len(shape) == 5:
        return [videos[i] for i in range(shape[0])]
    if shape is not None and len(shape) == 4:
        return [videos]
    if isinstance(videos, (list, tuple)):
        return list(videos)
    raise ValueError(f"videos must be [B,T,H,W,C] / [B,T,C,H,W] or a list of clips, got {type(videos).__name__} "
                     f"{list(shape) if shape is not None else ''}")


def video_reward(videos: Any, prompts: Sequence[str] | None = None, *, scorer: Any = None, fps: float = 16.0,
                 nan_reward: float = float("nan"), batch_size: int = 4) -> np.ndarray:
    """``video_quality`` of each clip, ``float32 [B]`` on 0..100 (``prompts`` are accepted for the reward-function
    shape; video quality does not read them)."""
    clips = _clips(videos)
    if prompts is not None and len(prompts) != len(clips):
        raise ValueError(f"{len(clips)} videos but {len(prompts)} prompts: give one prompt per video")
    rows = get_video_scorer(scorer).score(clips, fps=fps, batch_size=batch_size)
    return np.asarray([nan_reward if r["video_quality"] is None else r["video_quality"] for r in rows], np.float32)


def flow_grpo_video_reward(scorer: Any = None, *, scale: float = 0.01, fps: float = 16.0, nan_reward: float = 0.0,
                           batch_size: int = 4) -> Callable[..., tuple[dict[str, np.ndarray], dict[str, Any]]]:
    """A Flow-GRPO reward function: ``fn(videos, prompts, metadata, **kwargs)`` -> ``({"video_quality": [B],
    "avg": [B]}, {})``, scores times ``scale``; extra keyword arguments (``only_strict``) are ignored."""

    def fn(videos: Any, prompts: Sequence[str], metadata: Any = None, **kwargs: Any
           ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        r = video_reward(videos, prompts, scorer=scorer, fps=fps, nan_reward=float("nan"), batch_size=batch_size)
        scaled = (r * scale).astype(np.float32)
        return {"video_quality": scaled, "avg": np.where(np.isnan(scaled), nan_reward, scaled).astype(np.float32)}, {}

    return fn
