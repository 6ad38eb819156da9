"""The identity head and the quality labels of ViT-FIQA training, and how raw quality becomes utility (0-100).

* :class:`MarginHead` — class centres with an ArcFace (additive angular) or CosFace (additive cosine) margin;
* :func:`certainty_ratio` — CR-FIQA's label: cosine to the sample's own class centre over cosine to the nearest
  other class centre, ``ccs / (nccs + 1 + 1e-9)`` (the ``+ 1`` keeps the ratio positive and finite);
* :func:`utility_from_raw` — raw quality -> utility = the percentile of the training faces it beats (0-100).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import QUANTILES

MARGINS = ("arcface", "cosface")
DEFAULT_MARGIN = {"arcface": 0.5, "cosface": 0.35}
CR_EPS = 1e-9


class MarginHead(nn.Module):
    """Normalised class centres ``[num_classes, dim]``; :meth:`forward` gives scaled margin logits and the cosines."""

    def __init__(self, dim: int, num_classes: int, kind: str = "arcface", margin: float | None = None,
                 scale: float = 64.0) -> None:
        super().__init__()
        if kind not in MARGINS:
            raise ValueError(f"margin kind must be one of {MARGINS}, got {kind!r}")
        self.kind, self.scale = kind, float(scale)
        self.margin = DEFAULT_MARGIN[kind] if margin is None else float(margin)
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.normal_(self.weight, std=0.01)

    def cosines(self, embedding: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(embedding.float(), dim=1), F.normalize(self.weight.float(), dim=1))

    def forward(self, embedding: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos = self.cosines(embedding)
        target = cos.gather(1, labels[:, None]).squeeze(1)
        if self.kind == "cosface":
            adjusted = target - self.margin
        else:
            m = self.margin
            theta = torch.acos(target.clamp(-1 + 1e-7, 1 - 1e-7))
            # past theta + m = pi the angle would wrap round: fall back to the CosFace-like penalty there
            adjusted = torch.where(target > math.cos(math.pi - m), torch.cos(theta + m),
                                   target - math.sin(math.pi - m) * m)
        logits = cos.scatter(1, labels[:, None], adjusted[:, None]) * self.scale
        return logits, cos


def certainty_ratio(cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CR-FIQA's certainty ratio per sample from the cosines to every class centre (no margin), detached."""
    cos = cos.detach()
    ccs = cos.gather(1, labels[:, None]).squeeze(1)
    others = cos.scatter(1, labels[:, None], float("-inf"))
    nccs = others.max(dim=1).values
    return ccs / (nccs + 1 + CR_EPS)


def quantile_table(raw: Sequence[float] | np.ndarray) -> list[float]:
    """The raw qualities at the 0th, 1st, ..., 100th percentile of ``raw`` (the training faces)."""
    values = np.asarray(raw, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("no finite quality values to calibrate utility on")
    return [float(v) for v in np.quantile(values, np.linspace(0, 1, QUANTILES))]


def utility_from_raw(raw: torch.Tensor | np.ndarray | Sequence[float],
                     quantiles: Sequence[float] | None) -> np.ndarray:
    """Raw quality -> utility on 0-100: the share (%) of the training faces whose raw quality is lower.

    Monotonic, so it ranks faces (and gives EDC curves) exactly as the raw quality does. Without a calibration
    table (an imported recognizer whose quality head was never trained) it is ``100 * sigmoid(raw)``.
    """
    x = np.asarray(raw.detach().cpu() if isinstance(raw, torch.Tensor) else raw, dtype=np.float64)
    if quantiles is None:
        return 100.0 / (1.0 + np.exp(-x))
    q = np.asarray(quantiles, dtype=np.float64)
    levels = np.linspace(0.0, 100.0, len(q))
    # equal table entries (ties in the training faces) would make np.interp ill-defined: spread them a hair
    q = q + np.arange(len(q)) * 1e-12 * max(1.0, float(np.abs(q).max()))
    return np.interp(x, q, levels)
