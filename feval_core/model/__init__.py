"""The F-Eval LMM: checkpoint config and loading, backbone, face tokens, LoRA experts, heads, fast batching.

* :mod:`.config` — ``feval_config.json`` (:class:`FEvalConfig`), validated on load;
* :mod:`.checkpoint` — finding and checking a checkpoint (folder, hub id, or a plain VLM: zero-shot);
* :mod:`.backbone` — loading the VLM and its processor (safetensors only), the face token;
* :mod:`.tokens` — rating words read after the answer prefix whatever the tokenizer; user text never special;
* :mod:`.rows` — one (image, dimension) question as chat text, and its face vectors;
* :mod:`.lmm` — :class:`FEvalModel`: the forward pass and both readouts (rating words, regression head);
* :mod:`.shared_vision` — the fast path: vision once per image (or per vision expert), length buckets;
* :mod:`.vision` — the vision projector and the LoRA experts in the vision tower (none, shared, per dimension);
* :mod:`.heads`, :mod:`.experts` — facial projector, router, score head; per-dimension LoRA experts;
* :mod:`.batching`, :mod:`.vision_attention` — left padding and buckets; batched window attention;
* :mod:`.preprocess` — torch-only image preprocessing (gradients to the pixels).

Imports only :mod:`feval_core.inputs` and the base modules.
"""

from __future__ import annotations

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "FEvalConfig": "config", "FaceEncoderConfig": "config", "FEvalModel": "lmm", "resolve_base": "lmm",
    "FEvalOutput": "rows", "FEvalBatch": "rows", "Row": "rows", "build_row_text": "rows", "face_tensor": "rows",
    "save_experts": "experts", "attach_experts": "experts", "resolve_checkpoint": "checkpoint",
    "TrainedWeights": "checkpoint", "rating_token_ids": "tokens", "escape_special": "tokens",
    "vision_projector": "vision",
})
