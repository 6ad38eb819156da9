"""Scoring: the scorer users call, its results, the rules that decide which questions an image gets.

* :mod:`.scorer` — :class:`FEvalScorer` (load, save, score, stream);
* :mod:`.result` — :class:`ScoreResult` (scores ``[B, 4]``, records, why each dimension is missing) and the one
  rule that makes totals (:func:`~.result.judged_mean`: not asked -> left out, failed -> 0, no face -> floor);
* :mod:`.plan` — which (image, dimension) rows to ask, one rule for every caller: prompts cleaned, references
  loaded once, identity NaN with a reason without two faces, zero-shot identity from ArcFace;
* :mod:`.prefilter` — the pre-filter rule: faces under the threshold skip the model, faceless images never;
* :mod:`.tensors` — the same scores with gradients to the pixels (differentiable rewards);
* :mod:`.distributed` — data-parallel scoring under ``accelerate launch``.

Imports :mod:`feval_core.model`, :mod:`feval_core.faces`, :mod:`feval_core.inputs` and the base modules.
"""

from __future__ import annotations

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "FEvalScorer": "scorer", "ScoreResult": "result", "weighted_mean": "result", "judged_mean": "result",
    "TensorScorer": "tensors",
})
