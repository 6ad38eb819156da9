#!/usr/bin/env python
"""Which vision experts: held-out SRCC and scoring speed of ``vision_experts`` none / shared / per_dimension.

Trains the tiny F-Eval on the low-level task of :mod:`feval_core.testing.lowlevel` (quality = blur, noise, JPEG;
authenticity = plastic skin, over-saturation) with default settings except ``vision_experts``, once per option
(and seed), after a linear probe of the frozen model's features; then scores the same held-out images with each
trained checkpoint, side by side in one run, and prints SRCC, training time and img/s (with the ratio to
``none``); the tiny model's tower costs next to nothing, so the same is timed on a mid-size backbone (random
weights, 448 px). The option with the best SRCC at an acceptable cost is the default. ``shared`` is timed twice:
merged into the tower (what ``from_pretrained`` gives for scoring) and unmerged (``merge_vision=False``, a LoRA
branch in every tower linear).

    python benchmarks/vision_experts.py
    python benchmarks/vision_experts.py --seeds 0,1 --json vision.jsonl
    python benchmarks/vision_experts.py --speed-only --options none,shared
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing (and import benchmarks.speed)

logger = logging.getLogger("feval.bench")
DIMS = ("quality", "authenticity")
UNMERGED = "shared, unmerged"


def _speed(scorers: dict[str, object], images: list[str], repeats: int) -> dict[str, float]:
    """img/s of each scorer on the same images (both dimensions), best of ``repeats`` after a warm-up."""
    for s in scorers.values():
        s.score(images[:4], dims=DIMS)
    best: dict[str, float] = {}
    for _ in range(repeats):  # interleaved, so that drifts of the machine hit every option alike
        for k, s in scorers.items():
            t0 = time.perf_counter()
            s.score(images, dims=DIMS, batch_size=16)
            best[k] = max(best.get(k, 0.0), len(images) / (time.perf_counter() - t0))
    return best


def _mid_scorers(options: list[str], face_root: Path) -> dict[str, object]:
    """Scorers around one mid-size Qwen2.5-VL-class backbone (random weights; 8-layer, 256-wide vision tower,
    448 px: about 1,000 patches an image) with each vision-experts option: on the tiny models the tower costs
    next to nothing, so their img/s cannot show what running it once per dimension costs."""
    import torch

    from benchmarks.speed.backbones import BackboneSpec, build_scorer

    spec = BackboneSpec("mid (CPU)", 256, 4, 4, 2, 1024, 1024, vision_depth=8, vision_hidden=256, vision_heads=4,
                        vision_intermediate=1024, fullatt=(3, 7))
    scorers = {}
    for o in options:
        for name in ((o, UNMERGED) if o == "shared" else (o,)):
            torch.manual_seed(0)
            scorers[name] = build_scorer(spec, device="cpu", dtype=torch.float32, max_pixels=448 * 448,
                                         face_root=face_root, face_pack="tiny_face", det_size=128, attn="sdpa",
                                         vision_experts=o)
            if name == "shared" and not scorers[name].model.merge_vision_expert():  # as from_pretrained does
                raise RuntimeError("the shared vision expert did not merge")
    return scorers


def _trained_scorers(checkpoints: dict[str, Path]) -> dict[str, object]:
    """Each trained checkpoint loaded for scoring, and the shared one also unmerged."""
    from feval_core import FEvalScorer

    scorers = {k: FEvalScorer.from_pretrained(p, device="cpu") for k, p in checkpoints.items()}
    if "shared" in checkpoints:
        scorers[UNMERGED] = FEvalScorer.from_pretrained(checkpoints["shared"], device="cpu", merge_vision=False)
    return scorers


def _speed_only(args: argparse.Namespace) -> int:
    from feval_core.testing.facepack import write_tiny_face_pack
    from feval_core.testing.lowlevel import make_lowlevel_manifest

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.work or tmp)
        make_lowlevel_manifest(root / "data", 16, seed=2, size=448)
        write_tiny_face_pack(root / "faces")
        images = sorted(str(p) for p in (root / "data" / "images").glob("*.png"))
        mid = _speed(_mid_scorers(args.options.split(","), root / "faces"), images, args.repeats)
    print("| option | img/s (mid-size backbone, CPU) | x none |\n|---|---|---|")
    for o, v in mid.items():
        print(f"| {o} | {v:.3f} | {v / mid.get('none', v):.2f} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--options", default="none,shared,per_dimension")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds (data stays the same)")
    ap.add_argument("--train", type=int, default=3000, help="training images")
    ap.add_argument("--val", type=int, default=200, help="held-out images")
    ap.add_argument("--speed-images", type=int, default=64, help="held-out images scored for the speed comparison")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--schedule", help="training schedule (default: the default)")
    ap.add_argument("--speed-only", action="store_true", help="skip training: time the mid-size backbone only")
    ap.add_argument("--work", help="folder for data and runs (default: a temporary folder)")
    ap.add_argument("--json", help="also write the rows as JSON Lines here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("feval_core", "httpx", "transformers", "accelerate"):
        logging.getLogger(name).setLevel(logging.WARNING)

    import torch

    from feval_core.data.manifest import read_manifest
    from feval_core.testing.lowlevel import lowlevel_train_config, prepare_lowlevel_task
    from feval_core.train.loop import train

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if args.speed_only:
        return _speed_only(args)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        task = prepare_lowlevel_task(work / "task", n_train=args.train, n_val=args.val)
        rows, checkpoints = [], {}
        for seed in [int(s) for s in args.seeds.split(",")]:
            for option in args.options.split(","):
                out = work / f"run_{option}_{seed}"
                extra = {"schedule": args.schedule} if args.schedule else {}
                res = train(lowlevel_train_config(task, out, vision_experts=option, seed=seed, probe=not rows, **extra))
                if res.probe:
                    rows.append({"option": "linear probe (frozen)", "seed": "", **{
                        d: round(res.probe[d]["vision"], 4) for d in DIMS}})
                rows.append({"option": option, "seed": seed, "steps": res.steps, "train_s": round(res.seconds, 1),
                             **{d: round(res.val[d]["srcc"], 4) for d in DIMS}})
                checkpoints.setdefault(option, out)
                logger.info("%s", json.dumps(rows[-1]))
        images = [str(r.image) for r in read_manifest(task.data / "val.jsonl")][:args.speed_images]
        speed = _speed(_trained_scorers(checkpoints), images, args.repeats)
        mid = _speed(_mid_scorers(list(checkpoints), task.face_root), images[:16], args.repeats)
    if UNMERGED in speed:
        rows.append({"option": UNMERGED, "seed": ""})
    for r in rows:
        if r["option"] in speed:
            r["img_per_s"] = round(speed[r["option"]], 2)
            r["mid_img_per_s"] = round(mid[r["option"]], 3)
            if "none" in speed:
                r["x_none"] = round(speed[r["option"]] / speed["none"], 2)
                r["mid_x_none"] = round(mid[r["option"]] / mid["none"], 2)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} threads)"
    cols = ["option", "seed", "steps", "train_s", *DIMS, "img_per_s", "x_none", "mid_img_per_s", "mid_x_none"]
    print(f"low-level task: {args.train} train / {args.val} held-out images, default settings, {device}")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    if args.json:
        Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
