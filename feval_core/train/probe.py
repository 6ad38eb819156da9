"""A linear probe of what the frozen model sees: the standing diagnostic of whether training uses it.

Before training, :func:`linear_probe` reads two frozen features of every image and fits a ridge regression from
each to the MOS of each dimension (penalty chosen by 5-fold cross-validation on the training rows), then reports
the held-out SRCC:

* ``vision`` — the vision tower's output through the (untrained) projector, mean-pooled over the image's tokens:
  what the LLM is shown;
* ``answer`` — the LLM's last hidden state at the answer position of the dimension's row: what reaches the score.

A trained model should score at least as well as the ``vision`` probe; if ``answer`` is far below ``vision``,
the LLM does not pass what it sees to the scored position. ``feval train --probe`` runs it and writes
``probe.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .data import Example

logger = logging.getLogger(__name__)

PROBE_NAME = "probe.json"
RIDGE_PENALTIES = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)


def ridge_fit(x: np.ndarray, y: np.ndarray, penalty: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Standardised ridge regression: (mean, scale, weights, intercept) so that ``((x - mean) / scale) @ w + b``."""
    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / scale
    w = np.linalg.solve(z.T @ z + penalty * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    return mean, scale, w, float(y.mean())


def ridge_probe(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                folds: int = 5) -> float:
    """Held-out SRCC of a ridge regression whose penalty is chosen by ``folds``-fold cross-validation."""
    from ..evaluate.metrics import srcc

    order = np.arange(len(x_train))
    parts = np.array_split(order, min(folds, len(order)))
    best: tuple[float, float] | None = None
    for penalty in RIDGE_PENALTIES:
        pred = np.zeros(len(x_train))
        for part in parts:
            keep = np.setdiff1d(order, part)
            mean, scale, w, b = ridge_fit(x_train[keep], y_train[keep], penalty)
            pred[part] = ((x_train[part] - mean) / scale) @ w + b
        score = srcc(pred, y_train)
        if best is None or (np.isfinite(score) and score > best[0]):
            best = (score, penalty)
    assert best is not None
    mean, scale, w, b = ridge_fit(x_train, y_train, best[1])
    return float(srcc(((x_val - mean) / scale) @ w + b, y_val))


@torch.no_grad()
def frozen_features(model: Any, examples: Sequence[Example], *, batch_size: int = 32,
                    faces: Callable[[str], Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(vision, answer)`` features of each example (see the module docstring), with the model as it is now;
    ``faces(path)`` gives a face embedding (the training rows' own, from the face cache)."""
    from ..inputs.images import load_image, pad_to_aspect
    from ..model.rows import Row

    face = faces or (lambda path: None)
    vision, answer = [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        paths = dict.fromkeys(p for e in chunk for p in (e.image, e.ref, e.lq) if p)
        images = {p: pad_to_aspect(load_image(p)) for p in paths}
        prepared = {id(im): model.prepare_image(im) for im in images.values()}
        feats, _ = model._image_features([prepared[id(images[e.image])] for e in chunk])
        vision += [f.float().mean(0).cpu().numpy() for f in feats]
        rows = [Row(images[e.image], e.dim, prompt=e.prompt, ref=images.get(e.ref), face=face(e.image),
                    ref_face=face(e.ref) if e.ref else None, lq=images.get(e.lq)) for e in chunk]
        answer.append(model.score_rows(rows, prepared, bucket=False).hidden.float().cpu().numpy())
    return np.stack(vision), np.concatenate(answer)


def linear_probe(model: Any, train: Sequence[Example], val: Sequence[Example], dims: Sequence[str], *,
                 max_examples: int = 2000, seed: int = 0,
                 faces: Callable[[str], Any] | None = None) -> dict[str, dict[str, float]]:
    """Held-out SRCC of ridge probes on the frozen model's features, per dimension (see the module docstring).

    At most ``max_examples`` training examples per dimension are read (a seeded sample); it runs on the main
    process only, while the others wait (minutes on a 7B backbone: within the default process-group timeout)."""
    rng = np.random.default_rng(seed)
    result: dict[str, dict[str, float]] = {}
    for d in dims:
        tr = [e for e in train if e.dim == d]
        va = [e for e in val if e.dim == d]
        if len(tr) < 10 or len(va) < 3:
            logger.info("probe: too few %s examples (%d train, %d validation); skipped", d, len(tr), len(va))
            continue
        if len(tr) > max_examples:
            tr = [tr[i] for i in sorted(rng.choice(len(tr), max_examples, replace=False))]
        v_tr, a_tr = frozen_features(model, tr, faces=faces)
        v_va, a_va = frozen_features(model, va, faces=faces)
        y_tr, y_va = np.array([e.mos for e in tr]), np.array([e.mos for e in va])
        result[d] = {"vision": ridge_probe(v_tr, y_tr, v_va, y_va), "answer": ridge_probe(a_tr, y_tr, a_va, y_va),
                     "n_train": len(tr), "n_val": len(va)}
    return result


@torch.no_grad()
def routing_accuracy(model: Any, dims: Sequence[str]) -> float:
    """Share of the held-out paraphrases of ``dims`` (:mod:`feval_core.questions`) the router sends to their
    own dimension's expert (among ``dims``)."""
    from ..dimensions import DIM_INDEX
    from ..questions import router_examples

    texts, labels = router_examples(tuple(dims), held_out=True)
    logits = model.route(texts)
    allowed = torch.tensor([DIM_INDEX[d] for d in dims], device=logits.device)
    picked = allowed[logits[:, allowed].argmax(-1)]
    return float((picked.cpu() == torch.tensor([DIM_INDEX[d] for d in labels])).float().mean())
