"""The pack's socket types and node category."""

from __future__ import annotations

from comfy_api.latest import io

CATEGORY = "F-Eval"

FEvalModel = io.Custom("FEVAL_MODEL")
"""A loaded scorer (:class:`nodes.patcher.FEvalHandle`)."""

FEvalScores = io.Custom("FEVAL_SCORES")
"""Per-image scores on 0-100, higher is better (:class:`nodes.scores.FEvalScores`)."""
