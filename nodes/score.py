"""Node "Score faces (F-Eval)": per-image scores, a readable summary and a preview with the scores drawn on."""

from __future__ import annotations

import logging
import math

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.latest import io, ui

from feval_core import DIMENSIONS, ScoreResult
from feval_core.dimensions import unmet_need

from .images import to_uint8
from .patcher import FEvalHandle
from .preview import annotate
from .scores import RANGE_NOTE, FEvalScores
from .sockets import CATEGORY, FEvalModel
from .sockets import FEvalScores as FEvalScoresSocket

logger = logging.getLogger(__name__)

_TOOLTIPS = {
    "quality": "technical quality of the face image",
    "authenticity": "how real (not artificial) the face looks",
    "identity": "same person as the reference face (needs the reference input)",
    "correspondence": "agreement with the prompt (needs the prompt)",
}


class ScoreFaces(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FEvalScoreFaces",
            display_name="Score faces (F-Eval)",
            category=CATEGORY,
            description=f"Scores every image of the batch with F-Eval; {RANGE_NOTE}. Images without a face or "
                        "dimensions without their input (prompt, reference) get n/a with the reason.",
            inputs=[
                FEvalModel.Input("model"),
                io.Image.Input("images", tooltip="the faces to score (a batch)"),
                *[io.Boolean.Input(d, default=True, tooltip=f"score {d}: {_TOOLTIPS[d]}") for d in DIMENSIONS],
                io.Int.Input("batch_size", default=8, min=1, max=256,
                             tooltip="images per model call; lower it if memory runs out"),
                io.String.Input("prompt", multiline=True, default="", optional=True,
                                tooltip="the generation prompt, for correspondence"),
                io.Image.Input("reference", optional=True,
                               tooltip="reference face for identity: one image for all, or one per image"),
                io.String.Input("question", default="", optional=True,
                                tooltip="a question in your own words, e.g. 'How natural does this face look?': the "
                                        "model's router picks the expert that answers it (trained models only)"),
            ],
            outputs=[
                FEvalScoresSocket.Output("scores", display_name="scores"),
                *[io.Float.Output(f"{d}_score", display_name=d, is_output_list=True,
                                  tooltip=f"{d} of each image, 0-100 (NaN = not scored)") for d in DIMENSIONS],
                io.String.Output("summary", display_name="summary_json",
                                 tooltip="all scores as JSON, with their range (0-100, higher is better)"),
                io.Image.Output("preview", display_name="preview", tooltip="the images with their scores written on"),
                io.Float.Output("answer", display_name="answer", is_output_list=True,
                                tooltip="the score of each image on the question, 0-100 (NaN = no question or n/a)"),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model: FEvalHandle, images: torch.Tensor, quality: bool = True, authenticity: bool = True,
                identity: bool = True, correspondence: bool = True, batch_size: int = 8, prompt: str = "",
                reference: torch.Tensor | None = None, question: str = "") -> io.NodeOutput:
        if not isinstance(model, FEvalHandle):
            raise TypeError("model must come from the 'Load F-Eval model' node")
        batch = to_uint8(images)
        n = len(batch)
        refs = None if reference is None else to_uint8(reference, "reference")
        if refs is not None and len(refs) not in (1, n):
            raise ValueError(f"reference has {len(refs)} images for {n} images; give one reference for all or one "
                             "per image")
        text = " ".join((prompt or "").split()) or None
        asked = [d for d, on in zip(DIMENSIONS, (quality, authenticity, identity, correspondence)) if on]
        questions = [" ".join(question.split())] if question and question.strip() else []
        if not asked and not questions:
            raise ValueError("no dimension selected: switch on at least one of " + ", ".join(DIMENSIONS) +
                             ", or ask a question")
        header, dims = _usable_dims(asked, model, text is not None, refs is not None)
        parts: list[ScoreResult] = []
        if dims or questions:
            model.load()
            bar = comfy.utils.ProgressBar(n)
            mm.throw_exception_if_processing_interrupted()
            ref_arg = None if refs is None else (refs[0] if len(refs) == 1 else refs)
            chunks = model.scorer.iter_scores(batch, text, ref_arg, dims, batch_size=batch_size, questions=questions)
            try:
                for part in chunks:
                    parts.append(part)
                    bar.update(len(part))
                    mm.throw_exception_if_processing_interrupted()
            finally:
                chunks.close()  # stops the engine's read-ahead when interrupted
            result = ScoreResult.concat(parts)
        else:
            result = ScoreResult(scores=torch.full((n, len(DIMENSIONS)), float("nan")), names=[""] * n,
                                 faces=[None] * n, errors=[None] * n, warnings=[[] for _ in range(n)])
        answer = [math.nan] * n
        if questions and result.answers:
            a = result.answers[0][0]
            header.append(f"question \"{a['question']}\": answered by the {a['dimension']} expert "
                          f"(router probability {a['probability']:.2f}); the 'answer' output")
            answer = [math.nan if r[0]["score"] is None else float(r[0]["score"]) for r in result.answers]
        scores = _to_scores(result, tuple(asked), _method(model), header)
        preview = annotate(images, scores)
        summary = scores.to_text()
        logger.info("scored %d images with %s", n, scores.method)
        logger.debug("%s", summary)
        shown = ui.PreviewImage(preview, cls=cls).as_dict() | ui.PreviewText(summary).as_dict()
        columns = [scores.column(d) for d in DIMENSIONS]
        return io.NodeOutput(scores, *columns, scores.to_json(), preview, answer, ui=shown)


_HOW = {"needs a reference face image": "connect a reference face image to score it",
        "needs the generation prompt": "type the generation prompt to score it"}


def _usable_dims(asked: list[str], model: FEvalHandle, has_prompt: bool, has_ref: bool) -> tuple[list[str], list[str]]:
    """Notes about dimensions that cannot be scored (the engine's rule, :func:`feval_core.dimensions.unmet_need`,
    in the words of this node's inputs), and the dimensions that can."""
    header, dims = [], []
    for d in asked:
        need = unmet_need(d, has_prompt=has_prompt, has_ref=has_ref)
        if d not in model.scorer.config.dims:
            header.append(f"{d}: n/a - this model does not score it")
        elif need:
            header.append(f"{d}: n/a - {_HOW[need]}")
        else:
            dims.append(d)
    return header, dims


def _method(model: FEvalHandle) -> str:
    if model.scorer.model.trained:
        return f"F-Eval ({model.name})"
    return f"F-Eval zero-shot ({model.name}; identity = ArcFace similarity)"


def _to_scores(result: ScoreResult, dims: tuple[str, ...], method: str, header: list[str]) -> FEvalScores:
    notes = []
    for i in range(len(result)):
        msgs = list(result.warnings[i]) if result.warnings else []
        if result.errors[i]:
            msgs.insert(0, result.errors[i])
        notes.append(msgs)
    return FEvalScores(result.scores.float(), dims, list(result.faces), notes, method, header,
                       missing=[dict(m) for m in result.missing])
