"""Node "Face utility (ViT-FIQA)": how useful each image's main face is to a face recognizer, 0-100.

A ViT-FIQA model is a folder in ``models/feval/`` holding ``fiqa_config.json`` (from ``feval fiqa train``,
``feval fiqa import`` or ``feval make-tiny --fiqa``); its face pack comes from its config or ``models/insightface``.
The scores output carries ``utility`` for the ``min_utility`` threshold of "Filter by score" and "Pick best of N";
connect F-Eval scores to ``scores`` to threshold on both.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.latest import io, ui

from feval_core import DIMENSIONS
from feval_core.fiqa.config import FIQA_CONFIG_NAME
from feval_core.fiqa.scorer import FIQAScorer

from . import paths
from .images import to_uint8
from .patcher import DEVICE_AUTO, device_options, placement
from .scores import FEvalScores
from .sockets import CATEGORY
from .sockets import FEvalScores as FEvalScoresSocket

NO_MODEL = paths.NO_CHECKPOINT  # always offered, so a saved graph loads on any disk (validate_inputs says why)
OLD_NO_MODEL = "(no ViT-FIQA models in models/feval)"
METHOD = "ViT-FIQA utility (0-100: percentile of the model's training faces; higher = more useful to a recognizer)"


def resolve_fiqa_model(name: str) -> Path:
    """The folder of ViT-FIQA model ``name`` inside the feval model folders."""
    return paths.resolve_model_folder(name, FIQA_CONFIG_NAME, "ViT-FIQA model", "feval fiqa train", (OLD_NO_MODEL,))


@functools.lru_cache(maxsize=2)
def _scorer(folder: str, device: str) -> FIQAScorer:
    from feval_core.fiqa.config import FIQAConfig

    face = FIQAConfig.load(folder).face
    root = None if face.root else paths.require_face_pack(face.pack)  # no pack of its own: models/insightface's
    return FIQAScorer.from_pretrained(folder, device=device, face_root=root)


class FaceUtility(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        models = paths.list_model_folders(FIQA_CONFIG_NAME)
        return io.Schema(
            node_id="FEvalFaceUtility",
            display_name="Face utility (ViT-FIQA)",
            category=CATEGORY,
            description="How useful each image's main face is to a face recognizer (0-100, higher is better; the "
                        "percentile of the model's training faces): for picking reference photos or curating face "
                        "data. Not how the face looks to people. No face gives n/a with the reason.",
            inputs=[
                io.Image.Input("images"),
                io.Combo.Input("fiqa_model", options=[*models, NO_MODEL], default=models[0] if models else NO_MODEL,
                               tooltip="ViT-FIQA folder in models/feval (holds fiqa_config.json)"),
                io.Combo.Input("device", options=device_options(), default=DEVICE_AUTO),
                FEvalScoresSocket.Input("scores", optional=True,
                                        tooltip="optional F-Eval scores of the same images: utility is added to them"),
            ],
            outputs=[
                io.Float.Output("utility", display_name="utility", is_output_list=True,
                                tooltip="utility per image, 0-100 (NaN = no face)"),
                FEvalScoresSocket.Output("utility_scores", display_name="scores",
                                         tooltip="scores with utility, for the min_utility threshold of 'Filter by "
                                                 "score' and 'Pick best of N'"),
                io.String.Output("report", display_name="report"),
            ],
        )

    @classmethod
    def validate_inputs(cls, fiqa_model: str) -> bool | str:
        """ComfyUI's check before a run (it then skips its own list check for ``fiqa_model``)."""
        return paths.check_model_folder(fiqa_model, resolve_fiqa_model)

    @classmethod
    def execute(cls, images: torch.Tensor, fiqa_model: str = NO_MODEL, device: str = DEVICE_AUTO,
                scores: FEvalScores | None = None) -> io.NodeOutput:
        batch = to_uint8(images)
        n = len(batch)
        if scores is not None and len(scores) != n:
            raise ValueError(f"{n} images but scores for {len(scores)}: connect the scores of the same image batch")
        scorer = _scorer(str(resolve_fiqa_model(fiqa_model)), str(placement(device)[0]))
        bar = comfy.utils.ProgressBar(n)
        parts = []
        for start in range(0, n, 16):
            mm.throw_exception_if_processing_interrupted()
            parts.append(scorer.score(list(batch[start:start + 16])))
            bar.update(min(16, n - start))
        from feval_core.fiqa.scorer import FIQAResult

        res = FIQAResult.concat(parts)
        notes = [list(w) + ([e] if e else []) for w, e in zip(res.warnings, res.errors)]
        if scores is None:
            out = FEvalScores(torch.full((n, len(DIMENSIONS)), math.nan), (), list(res.faces), notes, METHOD,
                              utility=res.utility.clone())
        else:
            # every other field (the missing-score reasons totals use, the method, the range) passes on unchanged
            out = dataclasses.replace(scores, notes=[list(a) + b for a, b in zip(scores.notes, notes)],
                                      header=list(scores.header), utility=res.utility.clone())
        report = out.to_text()
        return io.NodeOutput([float(u) for u in res.utility], out, report, ui=ui.PreviewText(report))
