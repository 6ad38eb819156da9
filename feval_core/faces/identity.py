"""The identity rule, one copy for every caller (scorer, differentiable reward, nodes).

Identity fidelity compares the main face of an image with the main face of a reference. Without a face
model, or without a face in either picture, it is **not applicable**: NaN with a reason, never a number.
Zero-shot, the score is the ArcFace cosine mapped to 0..100.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..dimensions import NO_FACE, NO_FACE_IN_REFERENCE
from ..dimensions import NO_FACE_MODEL as NO_FACE_MODEL_CODE

NO_FACE_MODEL = "identity needs the insightface model pack; none is loaded"
NO_FACE_IN_IMAGE = "no face detected in the image"


def arcface_identity_score(cos: float) -> float:
    """Map an ArcFace cosine similarity to the 0-100 identity scale: ``100 * clip(cos, 0, 1)``; NaN stays NaN.

    The map is monotonic (non-decreasing), so rank metrics (SRCC, KRCC) computed on the scores equal those
    on the raw cosines, except that all negative cosines tie at 0.
    """
    cos = float(cos)
    if math.isnan(cos):
        return math.nan
    return 100.0 * min(max(cos, 0.0), 1.0)


def identity_blocker(has_face_model: bool, info: Any, ref_info: Any) -> str | None:
    """Why identity cannot be scored for this (image, reference) pair, or None when it can.

    ``info`` / ``ref_info``: the :class:`~feval_core.faces.encoder.FaceInfo` of the image and of the reference
    (None when nothing was analysed).
    """
    return _blocked(has_face_model, info, ref_info)[1]


def identity_missing(has_face_model: bool, info: Any, ref_info: Any) -> str | None:
    """The reason code (:data:`feval_core.dimensions.MISSING_REASONS`) behind :func:`identity_blocker`, or None.

    A reference without a face is the caller's input problem (:data:`~feval_core.dimensions.NO_FACE_IN_REFERENCE`)
    even when the image has none either; an image without a face next to a usable reference is the generator's
    failure (:data:`~feval_core.dimensions.NO_FACE`)."""
    return _blocked(has_face_model, info, ref_info)[0]


def _blocked(has_face_model: bool, info: Any, ref_info: Any) -> tuple[str | None, str | None]:
    if not has_face_model:
        return NO_FACE_MODEL_CODE, NO_FACE_MODEL
    missing = [what for what, fi in (("image", info), ("reference image", ref_info))
               if fi is None or not fi.has_face or fi.embedding is None]
    if missing:
        code = NO_FACE_IN_REFERENCE if "reference image" in missing else NO_FACE
        return code, f"no face detected in the {' and the '.join(missing)}; identity not scored"
    return None, None


def face_notes(notes: list[str]) -> list[str]:
    """One image's notes, each said once: repeats go, and the bare :data:`NO_FACE_IN_IMAGE` goes when a longer
    note says it too (identity's reason "no face detected in the image; identity not scored")."""
    out = list(dict.fromkeys(notes))
    if NO_FACE_IN_IMAGE in out and any(n != NO_FACE_IN_IMAGE and n.startswith(NO_FACE_IN_IMAGE) for n in out):
        out.remove(NO_FACE_IN_IMAGE)
    return out


def cosine(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Cosine similarity of two embeddings; NaN when either is missing."""
    if a is None or b is None:
        return math.nan
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return math.nan
    return float(a @ b / (na * nb))


def zero_shot_identity(info: Any, ref_info: Any) -> float:
    """Zero-shot identity of a pair that passed :func:`identity_blocker`: ``100 * max(cos, 0)`` of ArcFace."""
    return arcface_identity_score(cosine(info.embedding, ref_info.embedding))
