"""A wall-clock budget: a step runs only when its estimated time still fits, and every skip is recorded."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger("feval.bench")


class Budget:
    """``total_s`` seconds from ``start`` (a ``time.perf_counter()`` value; default now). ``None``: unlimited."""

    def __init__(self, total_s: float | None, start: float | None = None) -> None:
        self.total_s = total_s
        self.start = time.perf_counter() if start is None else start
        self.skipped: list[dict[str, object]] = []
        self.steps: list[dict[str, object]] = []  # what ran, and how long it took

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.steps.append({"step": what, "seconds": round(time.perf_counter() - t0, 2)})

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        return float("inf") if self.total_s is None else self.total_s - self.elapsed()

    def fits(self, what: str, estimate_s: float, reserve_s: float = 0.0) -> bool:
        """Whether ``what`` (estimated ``estimate_s``) fits while keeping ``reserve_s`` for later steps; a step that
        does not fit is logged and recorded in :attr:`skipped`."""
        left = self.remaining()
        if estimate_s + reserve_s <= left:
            return True
        self.skipped.append({"step": what, "estimate_s": round(estimate_s, 1), "reserved_s": round(reserve_s, 1),
                             "left_s": round(left, 1)})
        logger.warning("skipped %s: needs ~%.0f s (+%.0f s kept for later steps), %.0f s left", what, estimate_s,
                       reserve_s, left)
        return False
