"""A differentiable F-Eval reward for ReFL / DRaFT / AlignProp-style training.

The scores come from :class:`feval_core.scoring.tensors.TensorScorer` (the scorer's own rules on ``[B,3,H,W]``
tensors, torch-only preprocessing; see there what carries gradients); the reward is their total under the one rule
(:func:`feval_core.scoring.result.judged_mean`), exactly as :func:`~reward.core.feval_reward` computes it: a
failed identity (no face next to a usable reference) counts 0, a faceless image gets the floor (a constant: no
gradient) unless ``faces_required=False``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from feval_core.scoring.result import judged_mean
from feval_core.scoring.tensors import FaceEmbedder, TensorScorer

from .core import Weights, get_scorer, resolve_weights, weighted_dims

if TYPE_CHECKING:  # pragma: no cover
    from feval_core.scoring.scorer import FEvalScorer

logger = logging.getLogger(__name__)


def differentiable_dims(scorer: FEvalScorer, face_embedder: FaceEmbedder | None = None) -> tuple[str, ...]:
    """The dimensions whose score carries gradients to the pixels with this scorer."""
    return TensorScorer(scorer, face_embedder).differentiable_dims


class DifferentiableReward:
    """``reward(images, prompts, refs) -> [B]`` weighted F-Eval reward with gradients w.r.t. ``images``.

    ``images``: ``[B,3,H,W]`` (or ``[B,H,W,3]``) float in [0, 1], on any device. The scorer's frozen
    model is used as is (no copy); calls are serialised with the scorer's lock.
    """

    def __init__(self, scorer: FEvalScorer | str | Path | None = None, weights: Weights = None, *,
                 nan_reward: float = 0.0, face_embedder: FaceEmbedder | None = None, faces_required: bool = True,
                 device: str | None = None) -> None:
        self.scorer = get_scorer(scorer, device=device)
        self.faces_required = faces_required
        self.weights = resolve_weights(weights)
        self.nan_reward = nan_reward
        self.face_embedder = face_embedder
        self.tensor_scorer = TensorScorer(self.scorer, face_embedder)
        self.dims = tuple(d for d in weighted_dims(self.weights) if d in self.scorer.config.dims)
        constant = [d for d in self.dims if d not in self.tensor_scorer.differentiable_dims]
        if constant:
            logger.warning("differentiable reward: %s carries no gradient with this scorer (zero-shot identity is "
                           "an ONNX ArcFace cosine); its value still counts in the reward. Give it weight 0 or pass "
                           "face_embedder= to change that", ", ".join(constant))

    def __call__(self, images: torch.Tensor, prompts: Any = None, refs: Any = None, *,
                 faces: Sequence[Any] | None = None) -> torch.Tensor:
        infos = list(faces) if faces is not None else self.detect_faces(images)
        missing: list[dict[str, str]] = [{} for _ in infos]
        scores = self.tensor_scorer.scores(images, prompts, refs, self.dims, faces=infos, missing=missing)
        counts = [None if info is None else int(info.num_faces) for info in infos]
        return judged_mean(scores, self.weights, missing, counts, faces_required=self.faces_required,
                           empty=self.nan_reward)

    def scores(self, images: torch.Tensor, prompts: Any = None, refs: Any = None, *,
               faces: Sequence[Any] | None = None) -> torch.Tensor:
        """``[B, 4]`` scores in ``DIMENSIONS`` order (NaN where not scored), differentiable w.r.t. ``images``.

        ``faces``: one ``FaceInfo`` (or None) per image from :meth:`detect_faces`, to hold detections fixed
        (e.g. across several gradient steps); by default faces are detected on ``images`` now.
        """
        return self.tensor_scorer.scores(images, prompts, refs, self.dims, faces=faces)

    def detect_faces(self, images: torch.Tensor) -> list[Any]:
        """Each image's ``FaceInfo`` (None without a face model), found without gradients."""
        return self.tensor_scorer.detect_faces(images)


def differentiable_reward(images: torch.Tensor, prompts: Any = None, refs: Any = None, weights: Weights = None,
                          scorer: FEvalScorer | str | Path | None = None, *, nan_reward: float = 0.0,
                          face_embedder: FaceEmbedder | None = None, faces_required: bool = True,
                          device: str | None = None) -> torch.Tensor:
    """One-call form of :class:`DifferentiableReward` (build the class once when calling it in a loop)."""
    return DifferentiableReward(scorer, weights, nan_reward=nan_reward, face_embedder=face_embedder,
                                faces_required=faces_required, device=device)(images, prompts, refs)


__all__ = ["DifferentiableReward", "FaceEmbedder", "differentiable_dims", "differentiable_reward"]
