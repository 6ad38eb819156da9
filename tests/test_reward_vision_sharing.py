"""The differentiable reward runs the vision tower once per image, like the scorer, with the same scores and
gradients as once per (image, dimension) row."""

from __future__ import annotations

import torch

from feval_core.model.batching import PassStats
from feval_core.scoring.tensors import TensorScorer


def _scores_grad_and_tower_runs(scorer, images, faces, per_image: bool):
    ts = TensorScorer(scorer)
    ts.vision_per_image = per_image
    x = images.clone().requires_grad_(True)
    scorer.model.stats = stats = PassStats()
    try:
        scores = ts.scores(x, prompts=["a woman", "a man"], refs=faces["a"])
    finally:
        scorer.model.stats = None
    scores.nansum().backward()
    return scores.detach(), x.grad, stats.images


def test_vision_runs_once_per_image_with_the_same_scores_and_gradients(tiny_scorer, faces):
    torch.manual_seed(0)
    images = 0.1 + 0.8 * torch.rand(2, 3, 40, 48)
    shared, grad_shared, runs_shared = _scores_grad_and_tower_runs(tiny_scorer, images, faces, True)
    per_row, grad_per_row, runs_per_row = _scores_grad_and_tower_runs(tiny_scorer, images, faces, False)
    asked = int(torch.isfinite(shared).sum())
    assert asked == 8, "two images, four dimensions each (prompt and reference given)"
    assert runs_shared == 2 + 1, "each image once, and the reference once"
    assert runs_per_row == asked + 1, "the old path: once per (image, dimension) row"
    torch.testing.assert_close(shared, per_row, atol=1e-4, rtol=0)
    assert float(grad_shared.abs().sum()) > 0
    torch.testing.assert_close(grad_shared, grad_per_row, atol=1e-5, rtol=1e-4)
