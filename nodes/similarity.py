"""Node "Face similarity (ArcFace)": identity similarity of each image to a reference, without the LMM."""

from __future__ import annotations

import functools
import logging
import math

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.latest import io, ui

from feval_core import DIMENSIONS
from feval_core.faces.encoder import FaceEncoder
from feval_core.faces.registry import get_face_encoder
from feval_core.dimensions import NOT_ASKED
from feval_core.faces.identity import (
    NO_FACE_IN_IMAGE,
    cosine,
    face_notes,
    identity_blocker,
    identity_missing,
    zero_shot_identity,
)

from . import paths
from .images import to_uint8
from .patcher import DEVICE_AUTO, FEvalHandle, device_options, placement
from .scores import FEvalScores
from .sockets import CATEGORY, FEvalModel
from .sockets import FEvalScores as FEvalScoresSocket

logger = logging.getLogger(__name__)

METHOD = "ArcFace identity similarity (identity = 100 x max(cosine, 0))"


@functools.lru_cache(maxsize=2)
def _face_encoder(pack: str, root: str, device: str) -> FaceEncoder:
    return get_face_encoder(pack, root=root, device=device)


def load_face_encoder(pack: str, device: str) -> FaceEncoder:
    """The insightface pack ``pack`` from models/insightface (the last two stay loaded; the same loaded pack as the
    other nodes' when they use it with the same settings)."""
    root = paths.require_face_pack(pack)
    return _face_encoder(pack, str(root), str(placement(device)[0]))


class FaceSimilarity(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        packs = paths.list_face_packs()
        return io.Schema(
            node_id="FEvalFaceSimilarity",
            display_name="Face similarity (ArcFace)",
            category=CATEGORY,
            description="Identity similarity of each image's main face to the reference face with ArcFace: the "
                        "raw cosine (-1..1) and the identity score 0-100 (higher = more alike). Needs only an "
                        "insightface pack; no face gives n/a with the reason.",
            inputs=[
                io.Image.Input("images"),
                io.Image.Input("reference", tooltip="one reference face for all images, or one per image"),
                io.Combo.Input("face_pack", options=packs or [paths.DEFAULT_ZERO_SHOT_PACK],
                               default=packs[0] if packs else paths.DEFAULT_ZERO_SHOT_PACK,
                               tooltip="insightface pack in models/insightface/models (never downloaded)"),
                io.Combo.Input("device", options=device_options(), default=DEVICE_AUTO),
                FEvalModel.Input("model", optional=True,
                                 tooltip="optional: reuse this F-Eval model's face pack instead of loading one"),
            ],
            outputs=[
                io.Float.Output("cosine", display_name="cosine", is_output_list=True,
                                tooltip="ArcFace cosine similarity per image, -1..1 (NaN = no face)"),
                io.Float.Output("identity_score", display_name="identity", is_output_list=True,
                                tooltip="identity per image on 0-100, higher = same person (NaN = no face)"),
                FEvalScoresSocket.Output("id_scores", display_name="scores",
                                         tooltip="identity scores for 'Filter by score' / 'Pick best of N'"),
                io.String.Output("report", display_name="report"),
            ],
        )

    @classmethod
    def validate_inputs(cls, face_pack: str) -> bool | str:
        """ComfyUI's check before a run: the pack's name only. Whether it is installed is checked at run time, since
        a connected 'model' brings its own pack and leaves ``face_pack`` unused."""
        if face_pack is None:
            return True  # linked: checked at run time
        try:
            paths.check_pack_name(face_pack)
        except ValueError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, images: torch.Tensor, reference: torch.Tensor, face_pack: str = paths.DEFAULT_ZERO_SHOT_PACK,
                device: str = DEVICE_AUTO, model: FEvalHandle | None = None) -> io.NodeOutput:
        batch = to_uint8(images)
        refs = to_uint8(reference, "reference")
        n = len(batch)
        if len(refs) not in (1, n):
            raise ValueError(f"reference has {len(refs)} images for {n} images; give one for all or one per image")
        if model is not None:
            encoder = model.scorer.face_encoder
            if encoder is None:
                raise FileNotFoundError("this F-Eval model has no insightface pack loaded; disconnect 'model' to "
                                        "load one here, or " + paths.missing_pack_message(face_pack))
        else:
            encoder = load_face_encoder(face_pack, device)
        bar = comfy.utils.ProgressBar(n + len(refs))
        ref_infos = []
        for r in refs:
            mm.throw_exception_if_processing_interrupted()
            ref_infos.append(encoder.analyze(r))
            bar.update(1)
        cosines, identity, notes, faces, missing = [], [], [], [], []
        for i, img in enumerate(batch):
            mm.throw_exception_if_processing_interrupted()
            info = encoder.analyze(img)
            ref_info = ref_infos[0] if len(ref_infos) == 1 else ref_infos[i]
            blocked = identity_blocker(True, info, ref_info)  # the engine's identity rule, as the scorer applies it
            cosines.append(math.nan if blocked else cosine(info.embedding, ref_info.embedding))
            identity.append(math.nan if blocked else zero_shot_identity(info, ref_info))
            notes.append(face_notes(([] if info.has_face else [NO_FACE_IN_IMAGE]) + ([blocked] if blocked else [])))
            faces.append(int(info.num_faces))
            why = {d: NOT_ASKED for d in DIMENSIONS if d != "identity"}
            if blocked:
                why["identity"] = identity_missing(True, info, ref_info)
            missing.append({d: why[d] for d in DIMENSIONS if d in why})
            bar.update(1)
        values = torch.full((n, len(DIMENSIONS)), math.nan, dtype=torch.float32)
        values[:, DIMENSIONS.index("identity")] = torch.tensor(identity, dtype=torch.float32)
        scores = FEvalScores(values, ("identity",), faces, notes, METHOD, missing=missing)
        report = scores.to_text() + "\ncosine: " + ", ".join(
            f"#{i} {'n/a' if math.isnan(c) else f'{c:.3f}'}" for i, c in enumerate(cosines))
        if all(math.isnan(c) for c in cosines):
            reasons = "; ".join(sorted({w for ws in notes for w in ws}))
            logger.warning("face similarity: no image could be compared (%s)", reasons)
        return io.NodeOutput([float(c) for c in cosines], [float(v) for v in identity], scores, report,
                             ui=ui.PreviewText(report))

