"""Error-versus-Discard Characteristic (EDC) and its partial area (pAUC), ISO/IEC 29794-1 style.

A recognizer compares pairs of faces; a threshold fixed at a target false-match rate (FMR) on the non-mated
comparisons turns mated comparisons below it into false non-matches. Each comparison's quality is the **lower** of
its two samples' qualities. Discarding comparisons from the lowest quality up (comparisons of tied quality are
discarded together), the EDC is the FNMR of the comparisons that remain against the fraction discarded. It is a
step function: after a quality level is discarded, the FNMR holds until the next level is. The pAUC is its area
from 0 to ``x`` discarded (0.2 or 0.3); lower is better, and random discard keeps the FNMR flat, so its expected
pAUC is ``FNMR(0) * x``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["EDCCurve", "edc", "pair_quality", "threshold_at_fmr"]


@dataclass
class EDCCurve:
    """``error[k]`` is the FNMR once the fraction ``discard[k]`` of the comparisons is discarded (until the next
    step)."""

    discard: np.ndarray
    error: np.ndarray

    def pauc(self, upto: float) -> float:
        """Area under the EDC step function from 0 to ``upto`` discarded."""
        if not 0.0 < upto <= 1.0:
            raise ValueError(f"upto must be a discard fraction in (0, 1], got {upto}")
        ends = np.append(self.discard[1:], 1.0)
        widths = np.clip(np.minimum(ends, upto) - self.discard, 0.0, None)
        return float((widths * self.error).sum())

    def error_at(self, fraction: float) -> float:
        """FNMR after discarding ``fraction`` (the last step at or before it)."""
        k = int(np.searchsorted(self.discard, fraction, side="right")) - 1
        return float(self.error[max(k, 0)])

    @property
    def start(self) -> float:
        """FNMR with nothing discarded (the level random discard keeps)."""
        return float(self.error[0])

    def random_pauc(self, upto: float) -> float:
        """The expected pAUC of random discard: the FNMR stays at its start."""
        return self.start * upto


def pair_quality(q_a: np.ndarray, q_b: np.ndarray) -> np.ndarray:
    """A comparison's quality: the lower of its two samples'. NaN (not assessed) counts as the lowest quality."""
    a = np.where(np.isnan(q_a), -np.inf, np.asarray(q_a, np.float64))
    b = np.where(np.isnan(q_b), -np.inf, np.asarray(q_b, np.float64))
    return np.minimum(a, b)


def threshold_at_fmr(nonmated: np.ndarray, fmr: float) -> float:
    """The lowest threshold whose FMR (share of non-mated scores >= threshold) is at most ``fmr``."""
    scores = np.sort(np.asarray(nonmated, np.float64))[::-1]
    if scores.size == 0:
        raise ValueError("no non-mated comparisons: a threshold at a fixed FMR needs comparisons of different people")
    if not 0.0 < fmr < 1.0:
        raise ValueError(f"fmr must be in (0, 1), got {fmr}")
    allowed = int(math.floor(fmr * scores.size + 1e-9))  # false matches the target allows
    return float(np.nextafter(scores[allowed], np.inf)) if allowed < scores.size else float(scores[-1])


def edc(mated: np.ndarray, quality: np.ndarray, threshold: float) -> EDCCurve:
    """The FNMR EDC of mated comparison scores ``mated`` with pair qualities ``quality`` at ``threshold``."""
    mated = np.asarray(mated, np.float64)
    quality = np.asarray(quality, np.float64)
    if mated.shape != quality.shape or mated.ndim != 1 or mated.size == 0:
        raise ValueError(f"need one quality per mated comparison (got {mated.shape} scores, {quality.shape} qualities)")
    quality = np.where(np.isnan(quality), -np.inf, quality)
    errors = (mated < threshold).astype(np.int64)
    levels, inverse = np.unique(quality, return_inverse=True)  # ascending; tied comparisons share a level
    count = np.bincount(inverse, minlength=len(levels))
    wrong = np.bincount(inverse, weights=errors, minlength=len(levels))
    gone = np.concatenate([[0], np.cumsum(count)[:-1]])  # comparisons discarded before each level
    gone_wrong = np.concatenate([[0], np.cumsum(wrong)[:-1]])
    total, total_wrong = mated.size, errors.sum()
    return EDCCurve(gone / total, (total_wrong - gone_wrong) / (total - gone))
