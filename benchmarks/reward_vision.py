#!/usr/bin/env python
"""The differentiable reward with the vision tower once per image vs once per (image, dimension) row, side by side.

Forward + backward of ``DifferentiableReward`` on all four dimensions (prompt and reference given, faces held
fixed), on a mid-size Qwen2.5-VL-class backbone (random weights; 8-layer, 256-wide vision tower) at 448 px on the
CPU, or any backbone of ``benchmarks/speed/backbones.py`` on a GPU (``--backbone 7b --device cuda``). The tiny
test models' tower costs next to nothing, so they cannot show the difference.

    python benchmarks/reward_vision.py                   # CPU, mid-size backbone, 448 px, 2 images
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from benchmarks.speed.backbones import SPECS, build_scorer, write_images  # noqa: E402
from benchmarks.speed.sections import reward_vision_ratio  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="mid", choices=sorted(SPECS))
    p.add_argument("--size", type=int, default=448, help="image side in pixels")
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="timed rounds (best is reported), after one warm-up")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from feval_core.testing.facepack import write_tiny_face_pack

    work = Path(tempfile.mkdtemp(prefix="feval-reward-"))
    write_tiny_face_pack(work / "faces")
    paths = write_images(work / "img", args.images + 1, args.size)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    scorer = build_scorer(SPECS[args.backbone], device=args.device, dtype=dtype, max_pixels=args.size ** 2,
                          face_root=work / "faces", face_pack="tiny_face", det_size=160, attn="sdpa")
    r = reward_vision_ratio(scorer, paths[:-1], paths[-1], args.device, repeats=args.repeats)
    s = r["seconds"]
    print(f"Differentiable reward, {SPECS[args.backbone].name}, {args.images} images of {args.size} px, forward + "
          f"backward on {args.device}:")
    print("| vision tower | runs | seconds |\n|---|---:|---:|")
    for label in ("vision once per image", "vision once per row"):
        print(f"| {label.removeprefix('vision ')} | {r['vision_runs'][label]} | {s[label]:.3f} |")
    print(f"shared vs per-row vision: {r['ratio']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
