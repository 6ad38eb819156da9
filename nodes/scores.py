"""``FEvalScores``: what a FEVAL_SCORES socket carries between feval nodes."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from feval_core import DIMENSIONS

SCORE_RANGE = (0.0, 100.0)
RANGE_NOTE = "scores on 0-100, higher is better; n/a = not scored"


@dataclass
class FEvalScores:
    """Per-image scores of one IMAGE batch: ``values[i, j]`` is image ``i`` on ``DIMENSIONS[j]``.

    Every value is on 0-100 and higher is better; NaN means the dimension was not scored for that image
    (not asked, no prompt or reference, no face), ``notes[i]`` says why in words and ``missing[i]`` as the engine's
    reason codes (``{dimension: reason}``, :attr:`feval_core.ScoreResult.missing`), which totals use.
    """

    values: torch.Tensor  # [B, 4] float32, columns in DIMENSIONS order
    dims: tuple[str, ...]  # the dimensions that were asked for
    faces: list[int | None]  # faces detected per image; None = no face detector loaded
    notes: list[list[str]]  # messages per image
    method: str = "F-Eval"
    header: list[str] = field(default_factory=list)  # messages about the whole batch
    score_range: tuple[float, float] = SCORE_RANGE
    higher_is_better: bool = True
    utility: torch.Tensor | None = None  # [B] ViT-FIQA utility 0-100 (NaN: no face); set by "Face utility (ViT-FIQA)"
    missing: list[dict[str, str]] = field(default_factory=list)  # per image {dimension: reason code}; [] = unknown

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[1] != len(DIMENSIONS):
            raise ValueError(f"scores must be [B, {len(DIMENSIONS)}], got {tuple(self.values.shape)}")
        n = self.values.shape[0]
        if len(self.faces) != n or len(self.notes) != n:
            raise ValueError(f"{n} score rows but {len(self.faces)} face counts and {len(self.notes)} note lists")
        if self.utility is not None and tuple(self.utility.shape) != (n,):
            raise ValueError(f"{n} score rows but utility of shape {tuple(self.utility.shape)}")
        if self.missing and len(self.missing) != n:
            raise ValueError(f"{n} score rows but {len(self.missing)} missing-reason entries")

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def column(self, dim: str) -> list[float]:
        """One float per image (NaN where not scored)."""
        return [float(v) for v in self.values[:, DIMENSIONS.index(dim)]]

    def subset(self, indices: Sequence[int]) -> FEvalScores:
        """The rows ``indices``, in that order."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return FEvalScores(self.values.index_select(0, idx), self.dims, [self.faces[i] for i in indices],
                           [list(self.notes[i]) for i in indices], self.method, list(self.header),
                           utility=None if self.utility is None else self.utility.index_select(0, idx),
                           missing=[dict(self.missing[i]) for i in indices] if self.missing else [])

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per image (``None`` where not scored)."""
        rows = []
        for i in range(len(self)):
            row: dict[str, Any] = {"index": i}
            for j, d in enumerate(DIMENSIONS):
                v = float(self.values[i, j])
                row[d] = None if math.isnan(v) else round(v, 2)
            if self.utility is not None:
                u = float(self.utility[i])
                row["utility"] = None if math.isnan(u) else round(u, 2)
            row["faces"] = self.faces[i]
            row["notes"] = self.notes[i]
            rows.append(row)
        return rows

    def to_json(self) -> str:
        """The scores with their range and direction, as a JSON document."""
        return json.dumps({"method": self.method, "range": list(self.score_range),
                           "higher_is_better": self.higher_is_better, "dimensions": list(self.dims),
                           "notes": self.header, "images": self.records()}, ensure_ascii=False)

    def to_text(self) -> str:
        """A readable table: one line per image."""
        lines = [f"{self.method}: {RANGE_NOTE}", *self.header]
        for i in range(len(self)):
            cells = [f"{d} {fmt(float(self.values[i, DIMENSIONS.index(d)]))}" for d in self.dims]
            if self.utility is not None:
                cells.append(f"utility {fmt(float(self.utility[i]))}")
            faces = self.faces[i]
            if faces is not None:
                cells.append(f"{faces} face" + ("" if faces == 1 else "s"))
            line = f"#{i}: " + ", ".join(cells)
            if self.notes[i]:
                line += " - " + "; ".join(self.notes[i])
            lines.append(line)
        return "\n".join(lines)


def fmt(value: float | None) -> str:
    """A score as text: one decimal, or ``n/a``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.1f}"
