"""Node "Face quick check (landmark pre-filter)": a landmark + random-forest score per image in microseconds after
detection, and which images pass a threshold, before the slower scorers run.

A pre-filter is a folder in ``models/feval/`` holding ``prefilter_config.json`` and ``forest.onnx`` (from ``feval fiqa
prefilter train``); a folder with a pickle in it is refused. Its face pack comes from its config or
``models/insightface``.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import comfy.model_management as mm
import torch
from comfy_api.latest import io, ui

from feval_core.fiqa.prefilter import PREFILTER_CONFIG_NAME, LandmarkPrefilter

from . import paths
from .images import to_uint8
from .sockets import CATEGORY

NO_PREFILTER = "(no pre-filters in models/feval)"  # what graphs saved by earlier versions store
WHAT = "landmark pre-filter"


@functools.lru_cache(maxsize=2)
def _prefilter(folder: str) -> LandmarkPrefilter:
    from feval_core.fiqa.prefilter import PrefilterConfig

    face = PrefilterConfig.load(folder).face
    root = None if face.root else paths.require_face_pack(face.pack)  # no pack of its own: models/insightface's
    return LandmarkPrefilter.from_pretrained(folder, face_root=root)


def _folder(name: str) -> Path:
    return paths.resolve_model_folder(name, PREFILTER_CONFIG_NAME, WHAT, "feval fiqa prefilter train", (NO_PREFILTER,))


class FaceQuickCheck(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        models = paths.list_model_folders(PREFILTER_CONFIG_NAME)
        return io.Schema(
            node_id="FEvalFaceQuickCheck",
            display_name="Face quick check (landmark pre-filter)",
            category=CATEGORY,
            description="A fast face check from landmarks (pose, symmetry, size) and a small random forest trained on "
                        "a quality label: the score per image and the indices that pass the threshold. No face: n/a, "
                        "never passes.",
            inputs=[
                io.Image.Input("images"),
                io.Combo.Input("prefilter", options=[*models, paths.NO_CHECKPOINT],
                               default=models[0] if models else paths.NO_CHECKPOINT,
                               tooltip="pre-filter folder in models/feval (prefilter_config.json + forest.onnx)"),
                io.Float.Input("threshold", default=40.0, min=0.0, max=100.0, step=0.5,
                               tooltip="images whose score is at least this pass"),
            ],
            outputs=[
                io.Float.Output("score", display_name="score", is_output_list=True,
                                tooltip="pre-filter score per image, on the scale of its label (NaN = no face)"),
                io.String.Output("passed", display_name="passed", tooltip="indices that pass, comma-separated"),
                io.String.Output("report", display_name="report"),
            ],
        )

    @classmethod
    def validate_inputs(cls, prefilter: str) -> bool | str:
        """ComfyUI's check before a run (it then skips its own list check for ``prefilter``)."""
        return paths.check_model_folder(prefilter, _folder)

    @classmethod
    def execute(cls, images: torch.Tensor, prefilter: str = paths.NO_CHECKPOINT,
                threshold: float = 40.0) -> io.NodeOutput:
        folder = _folder(prefilter)
        pf = _prefilter(str(folder))
        mm.throw_exception_if_processing_interrupted()
        res = pf.score(list(to_uint8(images)))
        values = [float(v) for v in res.values]
        passed = [i for i, v in enumerate(values) if not math.isnan(v) and v >= threshold]
        lines = [f"{i}: " + ("n/a (no face)" if math.isnan(v) else f"{v:.1f} {'pass' if i in passed else 'below'}")
                 for i, v in enumerate(values)]
        report = f"{WHAT} ({pf.config.label}), threshold {threshold:g}: {len(passed)} of {len(values)} pass\n" + \
            "\n".join(lines)
        return io.NodeOutput(values, ",".join(map(str, passed)), report, ui=ui.PreviewText(report))
