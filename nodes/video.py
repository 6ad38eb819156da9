"""Node "Score face video (FVQ-Rater)": ``video_quality`` (0-100) of a face video given as frames (an IMAGE batch
and its frame rate, e.g. from VHS Load Video or a video generator) or as ComfyUI's VIDEO.

A video checkpoint is a folder in ``models/feval/`` holding ``video_config.json`` (from ``feval video train`` or
``feval make-tiny --video``). Scoring is :class:`feval_core.video.VideoScorer`; this node holds no scoring rules.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import comfy.model_management as mm
import torch
from comfy_api.latest import io, ui

from feval_core.video.config import VIDEO_CONFIG_NAME
from feval_core.video.scorer import VideoScorer

from . import paths
from .patcher import DEVICE_AUTO, device_options, placement
from .sockets import CATEGORY

OLD_NO_MODEL = "(no video checkpoints in models/feval)"  # what graphs saved by earlier versions store


def resolve_video_model(name: str) -> Path:
    """The folder of video checkpoint ``name`` inside the feval model folders."""
    return paths.resolve_model_folder(name, VIDEO_CONFIG_NAME, "video checkpoint",
                                      "feval video train` or `feval make-tiny --video", (OLD_NO_MODEL,))


@functools.lru_cache(maxsize=2)
def _scorer(folder: str, device: str) -> VideoScorer:
    return VideoScorer.from_pretrained(folder, device=device, workers=0)


class ScoreFaceVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        models = paths.list_model_folders(VIDEO_CONFIG_NAME)
        return io.Schema(
            node_id="FEvalScoreFaceVideo",
            display_name="Score face video (FVQ-Rater)",
            category=CATEGORY,
            description="Quality of a face video, 0-100 (higher is better): frames, motion (flicker, jitter, "
                        "dropped frames), the person and the face in every key frame. Give frames with their frame "
                        "rate, or a VIDEO. A video that cannot be scored gives NaN and the reason in the report.",
            inputs=[
                io.Combo.Input("video_model", options=[*models, paths.NO_CHECKPOINT],
                               default=models[0] if models else paths.NO_CHECKPOINT,
                               tooltip="video checkpoint folder in models/feval (holds video_config.json)"),
                io.Image.Input("frames", optional=True, tooltip="the clip's frames as an IMAGE batch [T,H,W,C]"),
                io.Float.Input("frame_rate", default=24.0, min=0.1, max=1000.0, step=0.1,
                               tooltip="frames per second of 'frames' (ignored for a VIDEO input)"),
                io.Video.Input("video", optional=True, tooltip="ComfyUI VIDEO (e.g. from Load Video)"),
                io.Combo.Input("device", options=device_options(), default=DEVICE_AUTO),
            ],
            outputs=[
                io.Float.Output("video_quality", display_name="video_quality", tooltip="0-100, NaN on error"),
                io.String.Output("report", display_name="report"),
            ],
        )

    @classmethod
    def validate_inputs(cls, video_model: str) -> bool | str:
        """ComfyUI's check before a run (it then skips its own list check for ``video_model``)."""
        return paths.check_model_folder(video_model, resolve_video_model)

    @classmethod
    def execute(cls, video_model: str = paths.NO_CHECKPOINT, frames: torch.Tensor | None = None,
                frame_rate: float = 24.0, video: Any = None, device: str = DEVICE_AUTO) -> io.NodeOutput:
        if (frames is None) == (video is None):
            raise ValueError("connect either 'frames' (an IMAGE batch) or 'video' (a VIDEO), not both or neither")
        scorer = _scorer(str(resolve_video_model(video_model)), str(placement(device)[0]))
        mm.throw_exception_if_processing_interrupted()
        row = scorer.score(video if video is not None else frames, fps=frame_rate)[0]
        quality = float("nan") if row["video_quality"] is None else float(row["video_quality"])
        report = report_text(row)
        return io.NodeOutput(quality, report, ui=ui.PreviewText(report))


def report_text(row: dict[str, Any]) -> str:
    if row["error"]:
        return f"video_quality n/a: {row['error']}"
    faces = "" if row.get("faces") is None else (f"; face in {row['faces']} of {row['face_frames']} key frames, "
                                                 f"worst at {row['worst_second']} s")
    return f"video_quality {row['video_quality']:.1f} / 100 ({row['duration']:.2f} s at {row['fps']:g} fps{faces})"
