"""Nodes "Filter by score" and "Pick best of N": keep images by their F-Eval scores.

When no image is kept, the image and score outputs carry ComfyUI's ``ExecutionBlocker``: the nodes that
consume them (PreviewImage, SaveImage, ...) are skipped instead of crashing on an empty batch, while the
``report`` output still says what happened.
"""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io, ui
from comfy_execution.graph_utils import ExecutionBlocker

from feval_core import DIMENSIONS

from .images import take
from .scores import RANGE_NOTE, FEvalScores, fmt
from .selection import MISSING_POLICIES, Selection, best_of_groups, filter_scores
from .sockets import CATEGORY
from .sockets import FEvalScores as FEvalScoresSocket

logger = logging.getLogger(__name__)


def _weight_inputs() -> list[io.Float.Input]:
    return [io.Float.Input(f"weight_{d}", default=1.0, min=0.0, max=10.0, step=0.1,
                           tooltip=f"weight of {d} in the total (a weighted mean of the scored dimensions)")
            for d in DIMENSIONS]


def _utility_input() -> io.Float.Input:
    return io.Float.Input("min_utility", default=0.0, min=0.0, max=100.0, step=0.5,
                          tooltip="drop images whose ViT-FIQA utility (how useful the face is to a face recognizer, "
                                  "0-100) is below this; needs scores from 'Face utility (ViT-FIQA)' (0 = off)")


def _faces_input() -> io.Boolean.Input:
    return io.Boolean.Input("allow_no_face", default=False,
                            tooltip="keep images in which no face was found (off: a face filter never keeps them)")


def _check(images: torch.Tensor, scores: FEvalScores) -> None:
    if not isinstance(scores, FEvalScores):
        raise TypeError("scores must come from 'Score faces (F-Eval)' or 'Face similarity (ArcFace)'")
    if images.shape[0] != len(scores):
        raise ValueError(f"{images.shape[0]} images but scores for {len(scores)}: connect the same image batch "
                         "that was scored")


def _outputs(images: torch.Tensor, scores: FEvalScores, kept: list[int]) -> tuple:
    if not kept:
        return ExecutionBlocker(None), ExecutionBlocker(None)
    return take(images, kept), scores.subset(kept)


def _report(title: str, sel: Selection, n: int, rules: list[str]) -> str:
    kept = ", ".join(f"#{i}" for i in sel.kept)
    if sel.kept:
        lines = [f"{title}: kept {len(sel.kept)} of {n} images: {kept} ({RANGE_NOTE})"]
    else:
        lines = [f"{title}: no image passed (0 of {n} kept); the nodes that take the kept images are skipped. "
                 "Lower the thresholds or see the reasons below."]
    lines += rules + sel.notes
    lines += [f"#{i} dropped: {why}" for i, why in sorted(sel.reasons.items())]
    if sel.totals is not None and sel.kept:
        lines.append("totals of kept images: " + ", ".join(f"#{i} {fmt(float(sel.totals[i]))}" for i in sel.kept))
    return "\n".join(lines)


class FilterByScore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FEvalFilterByScore",
            display_name="Filter by score (F-Eval)",
            category=CATEGORY,
            description="Keeps the images whose scores (0-100, higher is better) meet the thresholds, then the "
                        "top k by weighted total. A threshold of 0 is off.",
            inputs=[
                io.Image.Input("images"),
                FEvalScoresSocket.Input("scores"),
                *[io.Float.Input(f"min_{d}", default=0.0, min=0.0, max=100.0, step=0.5,
                                 tooltip=f"drop images whose {d} is below this (0 = no threshold)")
                  for d in DIMENSIONS],
                io.Float.Input("min_total", default=0.0, min=0.0, max=100.0, step=0.5,
                               tooltip="drop images whose weighted total is below this (0 = no threshold)"),
                _utility_input(),
                *_weight_inputs(),
                io.Int.Input("top_k", default=0, min=0, max=4096,
                             tooltip="then keep only the k best by weighted total, best first (0 = keep all)"),
                io.Combo.Input("missing", options=list(MISSING_POLICIES), default="reject",
                               tooltip="an image with no score (n/a) on a thresholded dimension: reject it, or "
                                       "ignore that threshold for it"),
                _faces_input(),
            ],
            outputs=[
                io.Image.Output("kept", display_name="images"),
                FEvalScoresSocket.Output("kept_scores", display_name="scores"),
                io.String.Output("indices", display_name="indices",
                                 tooltip="positions of the kept images, e.g. 0,3,5"),
                io.Int.Output("count", display_name="count"),
                io.Image.Output("rejected", display_name="rejected"),
                io.String.Output("report", display_name="report"),
            ],
        )

    @classmethod
    def execute(cls, images: torch.Tensor, scores: FEvalScores, min_quality: float = 0.0,
                min_authenticity: float = 0.0, min_identity: float = 0.0, min_correspondence: float = 0.0,
                min_total: float = 0.0, weight_quality: float = 1.0, weight_authenticity: float = 1.0,
                weight_identity: float = 1.0, weight_correspondence: float = 1.0, top_k: int = 0,
                missing: str = "reject", allow_no_face: bool = False, min_utility: float = 0.0) -> io.NodeOutput:
        _check(images, scores)
        limits = [v if v > 0 else None for v in (min_quality, min_authenticity, min_identity, min_correspondence)]
        weights = (weight_quality, weight_authenticity, weight_identity, weight_correspondence)
        sel = filter_scores(scores.values, limits, min_total=min_total if min_total > 0 else None, weights=weights,
                            top_k=top_k, missing=missing, reasons=scores.missing, faces=scores.faces,
                            allow_faceless=allow_no_face, utility=scores.utility,
                            min_utility=min_utility if min_utility > 0 else None)
        rules = [f"rule: {d} >= {fmt(v)}" for d, v in zip(DIMENSIONS, limits) if v is not None]
        if min_total > 0:
            rules.append(f"rule: total >= {fmt(min_total)}")
        if min_utility > 0:
            rules.append(f"rule: utility >= {fmt(min_utility)}")
        if top_k:
            rules.append(f"rule: best {top_k} by total")
        report = _report("Filter by F-Eval score", sel, len(scores), rules)
        if not sel.kept:
            logger.warning("%s", report.splitlines()[0])
        kept_images, kept_scores = _outputs(images, scores, sel.kept)
        dropped = [i for i in range(len(scores)) if i not in set(sel.kept)]
        rejected = take(images, dropped) if dropped else ExecutionBlocker(None)
        indices = ",".join(str(i) for i in sel.kept)
        return io.NodeOutput(kept_images, kept_scores, indices, len(sel.kept), rejected, report,
                             ui=ui.PreviewText(report))


class PickBestOfN(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FEvalPickBest",
            display_name="Pick best of N (F-Eval)",
            category=CATEGORY,
            description="From a batch generated from one prompt (or consecutive groups of N), keeps the best "
                        "image(s) by weighted total score (0-100, higher is better). Ties go to the earlier image.",
            inputs=[
                io.Image.Input("images"),
                FEvalScoresSocket.Input("scores"),
                io.Int.Input("group_size", default=0, min=0, max=4096,
                             tooltip="N: images per prompt, in batch order (0 = the whole batch is one group)"),
                io.Int.Input("keep", default=1, min=1, max=64, tooltip="how many best images to keep per group"),
                *_weight_inputs(),
                _faces_input(),
                _utility_input(),
            ],
            outputs=[
                io.Image.Output("best", display_name="images"),
                FEvalScoresSocket.Output("best_scores", display_name="scores"),
                io.String.Output("indices", display_name="indices", tooltip="positions of the picked images"),
                io.String.Output("report", display_name="report"),
            ],
        )

    @classmethod
    def execute(cls, images: torch.Tensor, scores: FEvalScores, group_size: int = 0, keep: int = 1,
                weight_quality: float = 1.0, weight_authenticity: float = 1.0, weight_identity: float = 1.0,
                weight_correspondence: float = 1.0, allow_no_face: bool = False,
                min_utility: float = 0.0) -> io.NodeOutput:
        _check(images, scores)
        weights = (weight_quality, weight_authenticity, weight_identity, weight_correspondence)
        sel = best_of_groups(scores.values, weights, group_size=group_size, keep=keep, reasons=scores.missing,
                             faces=scores.faces, allow_faceless=allow_no_face, utility=scores.utility,
                             min_utility=min_utility if min_utility > 0 else None)
        size = group_size or len(scores)
        rules = [f"rule: best {keep} of every {size}"] + ([f"rule: utility >= {fmt(min_utility)}"] if min_utility > 0
                                                          else [])
        report = _report("Pick best of N (F-Eval)", sel, len(scores), rules)
        if not sel.kept:
            logger.warning("%s", report.splitlines()[0])
        best_images, best_scores = _outputs(images, scores, sel.kept)
        return io.NodeOutput(best_images, best_scores, ",".join(str(i) for i in sel.kept), report,
                             ui=ui.PreviewText(report))
