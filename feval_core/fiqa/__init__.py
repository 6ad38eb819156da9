"""Face image quality for recognition (FIQA): ViT-FIQA, the ``utility`` score and EDC evaluation.

* :mod:`.config` — ``fiqa_config.json`` (:class:`FIQAConfig`: recognizer shapes, heads, face pack, calibration);
* :mod:`.vit` — arcface_torch's face-recognition ViT plus the quality token and heads (:class:`ViTFIQA`);
* :mod:`.labels` — margin heads (ArcFace/CosFace), CR-FIQA certainty-ratio labels, raw quality -> utility;
* :mod:`.data` — identity folders, pairs lists, faces aligned once with the face pack's 5 landmarks;
* :mod:`.train_config`, :mod:`.train` — ``feval fiqa train`` (accelerate, resumable);
* :mod:`.scorer` — :class:`FIQAScorer`: ``utility`` (0-100) per main face;
* :mod:`.edc`, :mod:`.evaluate` — EDC / pAUC (ISO/IEC 29794-1 style) and ``feval fiqa eval``;
* :mod:`.importer` — public arcface_torch ViT state dicts -> safetensors (``feval fiqa import``);
* :mod:`.mrlabels`, :mod:`.vl` — MR-FIQA labels without raters (embedding, vision-language, rank parts; ``fiqa label``);
* :mod:`.synth` — synthetic sets from a diffusers pipeline with degradations at known levels (``fiqa synth``);
* :mod:`.landmarks`, :mod:`.prefilter` — landmark features and the random-forest pre-filter in ONNX.

Sits above :mod:`feval_core.train` (it reuses its resumable state) and below :mod:`feval_core.testing`.
"""

from __future__ import annotations

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "FIQAConfig": "config", "ViTFIQA": "vit", "FIQAScorer": "scorer", "FIQAResult": "scorer",
    "FIQATrainConfig": "train_config", "train_fiqa": "train", "edc": "edc", "EDCCurve": "edc",
    "threshold_at_fmr": "edc", "pair_quality": "edc", "utility_from_raw": "labels", "certainty_ratio": "labels",
    "import_arcface_vit": "importer", "evaluate_fiqa": "evaluate", "LandmarkPrefilter": "prefilter",
    "train_prefilter": "prefilter", "landmark_features": "landmarks", "synthesize": "synth", "SynthConfig": "synth",
    "MRWeights": "mrlabels", "read_label_input": "mrlabels", "measure_parts": "mrlabels", "label_set": "mrlabels",
})
