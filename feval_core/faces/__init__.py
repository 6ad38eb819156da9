"""Faces: detection and ArcFace embeddings (insightface packs), the identity rule, differentiable alignment.

* :mod:`.encoder` — :class:`FaceEncoder` (an insightface pack, never downloaded) -> :class:`FaceInfo`;
* :mod:`.registry` — :func:`get_face_encoder`: one shared ``FaceEncoder`` per pack and settings in a process;
* :mod:`.landmark_model` — a pack's 106-point landmark model (``2d106det.onnx``), found by its shapes;
* :mod:`.identity` — the one rule for identity: NaN, with a reason, when the image or the reference has no
  face; the zero-shot ArcFace score ``100 * max(cos, 0)``;
* :mod:`.align` — ArcFace-template face crops with gradients (for differentiable rewards).

Imports only :mod:`feval_core.inputs` and the base modules.
"""

from __future__ import annotations

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "FaceEncoder": "encoder", "FaceInfo": "encoder", "select_providers": "encoder", "DEFAULT_FACE_PACK": "encoder",
    "DEFAULT_FACE_ROOT": "encoder", "FACE_ROOT_ENV": "encoder", "CROP_SIZE": "encoder", "get_face_encoder": "registry",
    "arcface_identity_score": "identity", "cosine": "identity",
    "identity_blocker": "identity", "zero_shot_identity": "identity",
    "aligned_face_crops": "align", "similarity_transform": "align", "ARCFACE_TEMPLATE": "align",
})
