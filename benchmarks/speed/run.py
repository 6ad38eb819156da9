"""Measure one backbone: img/s per image size and batch size, the CPU side, ablations and the naive path, each
step only when it fits the budget (estimated from what was already measured)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch

from .backbones import BackboneSpec
from .budget import Budget
from .flops import check_param_count, llm_params_per_token
from .measure import measure_ablations, measure_fast, measure_naive, measure_prep, per_run, warm_faces
from .report import result_row

logger = logging.getLogger("feval.bench")

ABLATION_RUNS = 6  # the fast path again + one run per speed feature switched off
NAIVE_SLOWDOWN = 15.0  # naive img/s is assumed this many times lower than the fast path's, until measured


def relative_cost(spec: BackboneSpec, other: BackboneSpec) -> float:
    """Rough time of ``other`` over ``spec`` for the same work (LLM weights per token; at least 0.3: fixed costs)."""
    return max(0.3, llm_params_per_token(other, 16) / llm_params_per_token(spec, 16))


class BackboneRun:
    """The measurements of one scorer (built around ``spec``) on ``images[size]`` (paths; ``refs[size]`` is the
    identity reference), appended to ``rows``/``meta`` as they finish."""

    def __init__(self, scorer: Any, spec: BackboneSpec, *, device: str, peak: float, images: dict[int, list[str]],
                 refs: dict[int, str], meta: dict[str, Any], budget: Budget | None = None,
                 rows: list[dict[str, Any]] | None = None) -> None:
        self.scorer, self.spec, self.device, self.peak = scorer, spec, device, peak
        self.images, self.refs, self.meta = images, refs, meta
        self.budget = budget or Budget(None)
        self.reserve: Callable[[], float] = lambda: 0.0  # seconds every step keeps free for later work
        self.rows: list[dict[str, Any]] = [] if rows is None else rows  # appended as measured (may hold others')
        self.best_ips: dict[int, float] = {}  # image size -> best fast-path img/s so far
        from feval_core.inputs.prefetch import default_workers

        with self.budget.step(f"{spec.name} face sessions"):
            first = next(iter(images.values()))
            warm_faces(scorer, first, scorer.workers if scorer.workers is not None else default_workers())
        self.fit = check_param_count(spec, scorer, 16)
        if abs(self.fit - 1.0) > 0.01:
            logger.warning("analytic LLM weights differ from the model's by %.1f%%", 100 * (self.fit - 1))

    def _mine(self, size: int) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["backbone"] == self.spec.name and r["image_px"] == size]

    # -- estimates --------------------------------------------------------------------------------------
    def ips_estimate(self, size: int) -> float | None:
        """Fast-path img/s at ``size``: measured, or scaled from a measured size by pixels; None if nothing yet."""
        if size in self.best_ips:
            return self.best_ips[size]
        if not self.best_ips:
            return None
        other, ips = min(self.best_ips.items(), key=lambda kv: abs(kv[0] - size))
        return ips * (other / size) ** 2

    def fast_estimate(self, size: int, images: int, batch: int) -> float:
        ips = self.ips_estimate(size)
        return 0.0 if ips is None else 1.2 * (images + batch) / ips + 2.0

    def size_estimate(self, size: int, batches: list[int], n_images: int) -> float:
        return sum(self.fast_estimate(size, per_run(n_images, b), b) for b in batches)

    # -- steps ------------------------------------------------------------------------------------------
    def measure_size(self, size: int, batches: list[int], n_images: int, reserve_s: float = 0.0) -> list[dict]:
        """img/s at each batch size (then the CPU side alone at the best one); returns the rows measured."""
        done = []
        for b in batches:
            paths = self.images[size][:-1][: per_run(n_images, b)]
            if not self.budget.fits(f"{self.spec.name} {size} px batch {b}",
                                    self.fast_estimate(size, len(paths), b), reserve_s + self.reserve()):
                continue
            try:
                with self.budget.step(f"{self.spec.name} {size} px batch {b}"):
                    m = measure_fast(self.scorer, paths, self.refs[size], b, self.device)
            except torch.cuda.OutOfMemoryError:
                logger.warning("%s b=%d %dpx: out of GPU memory; skipped (try --max-batch-tokens)", self.spec.name,
                               b, size)
                self.scorer.model.stats = None
                torch.cuda.empty_cache()
                continue
            row = result_row(self.spec, size, b, m, self.peak, self.fit)
            self.best_ips[size] = max(self.best_ips.get(size, 0.0), row["img_per_s"])
            logger.info("%s b=%d %dpx: %.2f img/s, MFU %.1f%%", self.spec.name, b, size, row["img_per_s"],
                        100 * row["mfu"])
            done.append(row)
            self.rows.append(row)
        if done:
            best = max(done, key=lambda r: r["img_per_s"])
            if self.budget.fits(f"{self.spec.name} {size} px CPU side", 5.0, reserve_s + self.reserve()):
                with self.budget.step(f"{self.spec.name} {size} px CPU side"):
                    prep = measure_prep(self.scorer, self.images[size][:-1], best["batch"])
                for r in done:
                    r["prep_img_per_s"] = prep
        return done

    def naive_estimate(self, sizes: list[int], n_naive: int) -> float:
        return sum((n_naive + 1) * NAIVE_SLOWDOWN / (self.ips_estimate(s) or 1.0) + 5.0 for s in sizes)

    def ablations(self, size: int, n_images: int, reserve_s: float = 0.0) -> None:
        """The fast path with each speed feature off in turn, at the best batch size measured at ``size``."""
        sized = self._mine(size)
        if not sized:
            return
        batch = max(sized, key=lambda r: r["img_per_s"])["batch"]
        paths = self.images[size][:-1][: per_run(n_images, batch)]
        est = ABLATION_RUNS * self.fast_estimate(size, len(paths), batch)
        if self.budget.fits(f"{self.spec.name} {size} px ablations", est, reserve_s + self.reserve()):
            with self.budget.step(f"{self.spec.name} {size} px ablations"):
                self._ablations(size, paths, batch)

    def _ablations(self, size: int, paths: list[str], batch: int) -> None:
        self.meta["ablations"].append({"backbone": self.spec.name, "batch": batch, "image_px": size,
                                           "img_per_s": measure_ablations(self.scorer, paths, self.refs[size], batch,
                                                                          self.device)})

    def naive(self, sizes: list[int], n_naive: int, reserve_s: float = 0.0) -> None:
        """The naive path (fp32 weights, transformers' per-window vision attention) at each measured size; the
        model stays fp32 afterwards, so this is a backbone's last step."""
        from feval_core.model.vision_attention import restore_window_attention

        sizes = [s for s in sizes if self._mine(s)]
        if n_naive <= 0 or not sizes:
            return
        converted = False
        for size in sizes:
            ips = self.ips_estimate(size) or 1.0
            if not self.budget.fits(f"{self.spec.name} {size} px naive path",
                                    (n_naive + 1) * NAIVE_SLOWDOWN / ips + 5.0, reserve_s + self.reserve()):
                continue
            if not converted:
                self.scorer.model.float()  # the naive path: fp32 weights (experts and heads included)
                restore_window_attention(self.scorer.model.backbone)  # and transformers' own per-window loop
                converted = True
            with self.budget.step(f"{self.spec.name} {size} px naive path"):
                ips = measure_naive(self.scorer, self.images[size][: n_naive + 1], self.refs[size], self.device)
            self.meta["naive"].append({"backbone": self.spec.name, "image_px": size, "img_per_s": ips})
            for r in self._mine(size):
                r["naive_img_per_s"] = ips
                r["ratio_to_naive"] = r["img_per_s"] / ips if ips > 0 else math.nan
