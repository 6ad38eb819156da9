#!/usr/bin/env python
"""The one GPU command: every speed figure of README "Speed at scale" in at most 8 minutes, model builds included.

    python benchmarks/gpu_suite.py                       # on a GPU: writes gpu-suite.json, prints the tables
    python benchmarks/readme_table.py gpu-suite.json     # puts the figures into README's table
    python benchmarks/gpu_suite.py --dry-run             # the same code on the CPU with a tiny preset (CI)

In order, each step only when its estimate (from what was measured before) still fits ``--budget-s``, with time
kept for the steps that must come after; a skipped step is listed in the JSON with its estimate:

1. the bf16 matmul peak (the MFU denominator);
2. Qwen2.5-VL-7B- then 3B-class backbones at real size (random weights; built on the meta device and initialised
   on the GPU): img/s at batch 1, 4, 16, 32 at 512 px with MFU, peak GPU memory, CPU wait (the share of time
   the model waited for prepared images) and the CPU side alone; one ablation per speed feature at the best
   batch; 1024 px if time remains; the naive path (fp32, one image x one dimension per forward) and the ratio;
3. the differentiable reward with the vision tower once per image vs once per row (the last backbone);
4. face detection with 1 vs 2 workers on this machine's CPU (real-size random-weight SCRFD-10G + iResNet-50);
5. the scorers other rooms add (``--extras``; FIQA and video plug in through ``benchmarks/speed/sections.py``):
   ViT-FIQA crops/s; face-video clips/s at 8 key frames, batch 1/4/8 (Qwen2.5-VL-3B-class + VideoMAE-base +
   Segformer-b0 + the real-size face pack), each only when its estimate fits.

Faces come from the real-size random-weight pack, so the CPU side costs what ``buffalo_l`` costs. The JSON is
rewritten after every step: a run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

START = time.perf_counter()  # the budget counts from here: imports and model construction included
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from benchmarks.speed.backbones import SPECS, build_scorer, write_images  # noqa: E402
from benchmarks.speed.budget import Budget  # noqa: E402
from benchmarks.speed.measure import matmul_peak, per_run  # noqa: E402
from benchmarks.speed.report import markdown  # noqa: E402
from benchmarks.speed.run import BackboneRun, relative_cost  # noqa: E402
from benchmarks.speed.sections import (  # noqa: E402
    EXTRA_SECTIONS,
    detect_workers_ratio,
    extra_estimate_s,
    reward_vision_ratio,
    run_extra,
)
from benchmarks.throughput import run_meta, write_json  # noqa: E402

logger = logging.getLogger("feval.bench")

PRESETS: dict[str, dict[str, Any]] = {
    "gpu": dict(backbones=["7b", "3b"], sizes=[512], optional_sizes=[1024], batches=[1, 4, 16, 32], images=48,
                naive=3, det_size=640, pack_scale=1.0, budget_s=450.0, reward=(512, 4), repeats=2,
                detect=(16, 640, 640)),
    "dry-run": dict(backbones=["small"], sizes=[112], optional_sizes=[140], batches=[1, 2], images=4,
                    naive=1, det_size=160, pack_scale=0.125, budget_s=170.0, reward=(112, 2), repeats=1,
                    detect=(4, 256, 256)),
}
REWARD_S, DETECT_S = 30.0, 40.0  # rough costs of the reward and detection sections, kept free while measuring
GRACE_S = 25.0  # past the budget, a step that overran is interrupted (450 + 25 s: within 8 minutes)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny preset on the CPU (what CI runs; figures mean nothing)")
    p.add_argument("--json", default="gpu-suite.json", help="results file (default: gpu-suite.json)")
    p.add_argument("--budget-s", type=float, help="wall-clock budget in seconds (default: 450 GPU, 170 dry run)")
    p.add_argument("--backbones", nargs="+", choices=sorted(SPECS), help="default: 7b 3b")
    p.add_argument("--device", help="default: cuda (cpu with --dry-run)")
    p.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, flash_attention_2)")
    p.add_argument("--workers", type=int, help="prefetch threads (default: min(8, CPU cores); 1 in a dry run)")
    p.add_argument("--extras", nargs="*", choices=sorted(EXTRA_SECTIONS), default=sorted(EXTRA_SECTIONS),
                   help="scorers of other rooms to include when they exist (default: all)")
    p.add_argument("--no-reward", action="store_true", help="skip the differentiable-reward section")
    p.add_argument("--no-detect", action="store_true", help="skip the face-detection workers section")
    return p.parse_args(argv)


class Suite:
    """One run of the suite: its preset, budget, files and results (written after every step)."""

    def __init__(self, args: argparse.Namespace, argv: list[str] | None) -> None:
        self.args = args
        self.cfg = dict(PRESETS["dry-run" if args.dry_run else "gpu"])
        if args.backbones:
            self.cfg["backbones"] = args.backbones
        self.device = args.device or ("cpu" if args.dry_run else "cuda")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise SystemExit("gpu_suite: no CUDA device here; run it on a GPU machine, or add --dry-run for the CPU "
                             "smoke run")
        self.dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.budget = Budget(args.budget_s or self.cfg["budget_s"], start=START)
        self.work = Path(tempfile.mkdtemp(prefix="feval-gpu-suite-"))
        self.command = " ".join(["benchmarks/gpu_suite.py", *(argv if argv is not None else sys.argv[1:])])
        self.results: list[dict[str, Any]] = []
        self.sections: dict[str, Any] = {}
        self.meta: dict[str, Any] = {}

    def save(self, complete: bool = False) -> str:
        self.meta.update(elapsed_s=round(self.budget.elapsed(), 1), skipped=self.budget.skipped,
                         steps=self.budget.steps, complete=complete)
        table = markdown(self.results, self.meta) if self.meta.get("device_name") else ""
        write_json(self.args.json, self.meta, self.results, table, sections=self.sections)
        return table

    def setup(self) -> None:
        from feval_core.testing.facepack_sized import SIZED_PACK_NAME, write_sized_face_pack

        if self.device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = False  # the naive fp32 path is plain fp32
        with self.budget.step("matmul peak"):
            peak = matmul_peak(self.device, self.dtype)
        self.meta = run_meta(self.device, self.dtype, peak, self.args.attn,
                             f"{SIZED_PACK_NAME} (SCRFD-10G + iResNet-50 class, random weights, scale "
                             f"{self.cfg['pack_scale']})", self.command)
        self.meta.update(suite="gpu_suite", dry_run=self.args.dry_run, budget_s=self.budget.total_s,
                         date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                         workers=self.workers, cpu_cores=os.cpu_count())
        self.face_root = self.work / "faces"
        count = max(per_run(self.cfg["images"], b) for b in self.cfg["batches"]) + 1
        sizes = self.cfg["sizes"] + self.cfg["optional_sizes"]
        with self.budget.step("face pack and images"):
            write_sized_face_pack(self.face_root, scale=self.cfg["pack_scale"])
            self.images = {s: write_images(self.work / f"img{s}", count, s) for s in sizes}
        self.refs = {s: self.images[s][-1] for s in sizes}
        self.save()

    @property
    def workers(self) -> int:
        if self.args.workers is not None:
            return self.args.workers
        return 1 if self.args.dry_run else max(1, min(8, os.cpu_count() or 1))

    def backbone(self, key: str, later: list[str], last: bool) -> None:
        """All measurements of one backbone, keeping time for the mandatory part of the ``later`` ones."""
        from feval_core.testing.facepack_sized import SIZED_PACK_NAME

        spec, cfg = SPECS[key], self.cfg
        t0 = time.perf_counter()
        with self.budget.step(f"build {spec.name}"):
            scorer = build_scorer(spec, device=self.device, dtype=self.dtype,
                                  max_pixels=max(cfg["sizes"] + cfg["optional_sizes"]) ** 2, face_root=self.face_root,
                                  face_pack=SIZED_PACK_NAME, det_size=cfg["det_size"], attn=self.args.attn)
        scorer.workers = self.workers
        self.meta.setdefault("build_s", {})[spec.name] = round(time.perf_counter() - t0, 1)
        run = BackboneRun(scorer, spec, device=self.device, peak=self.meta["peak_flops"], images=self.images,
                          refs=self.refs, meta=self.meta, budget=self.budget, rows=self.results)
        # the time this backbone has taken so far, scaled to each later backbone, stays free for their mandatory part
        later_cost = sum(relative_cost(spec, SPECS[k]) for k in later)
        run.reserve = lambda: (time.perf_counter() - t0) * later_cost
        for size in cfg["sizes"]:
            run.measure_size(size, cfg["batches"], cfg["images"])
            run.ablations(size, cfg["images"])
        sections = REWARD_S * (not self.args.no_reward) + DETECT_S * (not self.args.no_detect)
        for size in cfg["optional_sizes"]:  # only what leaves time for the naive path and the sections
            run.measure_size(size, cfg["batches"], cfg["images"],
                             reserve_s=sections + run.naive_estimate(cfg["sizes"], cfg["naive"]))
        self.save()
        if last and not self.args.no_reward:
            self.reward(scorer)
        run.naive(cfg["sizes"] + cfg["optional_sizes"], cfg["naive"])
        self.save()
        del scorer, run
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def reward(self, scorer: Any) -> None:
        size, batch = self.cfg["reward"]
        if self.budget.fits("differentiable reward", REWARD_S, DETECT_S * (not self.args.no_detect)):
            paths = self.images[size][:batch]
            with self.budget.step("differentiable reward"):
                self.sections["differentiable_reward"] = reward_vision_ratio(scorer, paths, self.refs[size],
                                                                             self.device, repeats=self.cfg["repeats"])
            self.save()

    def detect(self) -> None:
        count, size, det_size = self.cfg["detect"]
        if self.budget.fits("face detection workers", DETECT_S):
            with self.budget.step("face detection workers"):
                self.sections["detect_workers"] = detect_workers_ratio(count, size, det_size, self.cfg["pack_scale"],
                                                                       self.work)
            self.save()

    def extras(self) -> None:
        for name in self.args.extras:
            estimate = extra_estimate_s(name, self.args.dry_run)
            if not self.budget.fits(f"{name} section", estimate):
                self.sections[name] = {"status": "skipped (budget)", "estimate_s": estimate}
                continue
            with self.budget.step(f"{name} section"):
                self.sections[name] = run_extra(name, self.device, max(0.0, self.budget.remaining()),
                                                self.args.dry_run)
            self.save()


def summary(sections: dict[str, Any]) -> list[str]:
    lines = []
    r = sections.get("differentiable_reward")
    if r:
        s = r["seconds"]
        lines.append(f"Differentiable reward ({r['images']} images, {r['image_px']} px, forward + backward): vision "
                     f"once per image {s['vision once per image']:.3f} s, once per row {s['vision once per row']:.3f} s"
                     f" -> {r['ratio']:.2f}x (vision runs {r['vision_runs']})")
    d = sections.get("detect_workers")
    if d:
        lines.append(f"Face detection + ArcFace ({d['images']} images, det {d['det_size']} px, pack scale "
                     f"{d['pack_scale']}): 2 vs 1 workers {d['ratio']:.2f}x, vs the old lock "
                     f"{d['ratio_vs_old_lock']:.2f}x")
    for name in EXTRA_SECTIONS:
        if name in sections:
            lines.append(f"{name}: {sections[name].get('table') or sections[name]['status']}")
    return lines


class OutOfTime(Exception):
    """Raised by the alarm when a step overran its estimate past the budget's grace period."""


def _out_of_time(signum: int, frame: Any) -> None:
    raise OutOfTime


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    suite = Suite(args, argv)
    # a step whose estimate was far off must not take the run past its wall-clock limit: stop, keep what is done
    grace = max(60, int(suite.budget.remaining() + GRACE_S))
    previous = signal.signal(signal.SIGALRM, _out_of_time) if hasattr(signal, "SIGALRM") else None
    if previous is not None:
        signal.alarm(grace)
    complete = True
    try:
        suite.setup()
        keys = suite.cfg["backbones"]
        for i, key in enumerate(keys):
            suite.backbone(key, later=keys[i + 1:], last=i == len(keys) - 1)
        if not args.no_detect:
            suite.detect()
        suite.extras()
    except OutOfTime:
        complete = False
        logger.error("out of time %d s after the start: stopped; the JSON holds the steps that finished", grace)
    finally:
        if previous is not None:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
    table = suite.save(complete=complete)
    print(table)
    for line in summary(suite.sections):
        print(line)
    for s in suite.budget.skipped:
        print(f"Skipped (budget): {s['step']} (needed ~{s['estimate_s']} s, {s['left_s']} s left)")
    print(f"Total {suite.budget.elapsed():.0f} s of a {suite.budget.total_s:.0f} s budget; results in {args.json}")
    return 0 if complete else 3


if __name__ == "__main__":
    sys.exit(main())
