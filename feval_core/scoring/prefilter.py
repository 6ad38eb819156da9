"""The one pre-filter rule: a face whose pre-filter score is under the caller's threshold is not given to the
expensive model, and its row says so; an image without a face (or one that could not be read) is never skipped.

A pre-filter is any object with ``score(images, items=..., faces=...)`` returning ``values`` (one float per image,
NaN where no face) and ``share_faces(face_encoder)`` (get ready to reuse that encoder's ``FaceInfo`` s):
:class:`feval_core.fiqa.prefilter.LandmarkPrefilter`. ``faces`` are the ``FaceInfo`` s the
scorer already found (None where it found none to give); the pre-filter reuses them when its face pack is the
scorer's, so faces are detected once. :class:`~feval_core.scoring.scorer.FEvalScorer` skips the LMM by this rule;
``FIQAScorer`` skips ViT-FIQA by it when it scores alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class PrefilterPass:
    """One chunk through the pre-filter: its ``values`` (NaN: no face, or unreadable) and which ones are skipped."""

    values: list[float]
    skipped: list[bool]
    threshold: float | None

    @classmethod
    def of(cls, values: Sequence[float], threshold: float | None) -> PrefilterPass:
        """The rule applied to ``values``."""
        values = [float(v) for v in values]
        return cls(values, skipped(values, threshold), threshold)

    def note(self, i: int, model: str = "the LMM") -> str:
        """The warning of skipped image ``i``."""
        return f"skipped: pre-filter score {self.values[i]:.1f} < {self.threshold:g}, not scored by {model}"

    def record_value(self, i: int) -> float | None:
        """Image ``i``'s value as a result row holds it (``prefilter``: rounded, null where no face)."""
        v = self.values[i]
        return None if math.isnan(v) else round(v, 3)


def check_threshold(prefilter: Any, threshold: float | None) -> None:
    """A threshold needs a pre-filter, and must be a finite number."""
    if threshold is None:
        return
    if prefilter is None:
        raise ValueError("prefilter_threshold needs a prefilter: pass prefilter=LandmarkPrefilter.from_pretrained(DIR)")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"prefilter_threshold must be a finite number (on the pre-filter's scale, e.g. 0-100), "
                         f"got {threshold!r}")


def skipped(values: Sequence[float], threshold: float | None) -> list[bool]:
    """True where a value is under ``threshold``; NaN (no face, unreadable) is never skipped; no threshold: none."""
    return [threshold is not None and not math.isnan(v) and v < threshold for v in values]


def run_prefilter(prefilter: Any, items: Sequence[Any], faces: Sequence[Any] | None,
                  threshold: float | None) -> PrefilterPass:
    """Score ``items`` (``ImageItem`` s) with ``prefilter``, from ``faces`` where it can reuse them; apply the rule."""
    res = prefilter.score(None, items=list(items), faces=None if faces is None else list(faces))
    return PrefilterPass.of(res.values, threshold)
