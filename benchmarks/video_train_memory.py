#!/usr/bin/env python
"""Flat memory in the number of training clips: peak RSS of a video training run over N and over 4 x N clips (tiny
video checkpoint's encoders and backbone, one epoch, all four branches, the training defaults' 8 key frames at
448 px, CPU), each in a fresh process, side by side. The features are written to the run's feature cache and read
back per batch, so the larger run's peak should be at most ~1.1 x the smaller one's. For scale, the same clips'
features held in a Python list (what the loop did before) are measured too, and the cache's size on disk.

    python benchmarks/video_train_memory.py --clips 24 --factor 4 --frames 16 --size 480
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def child(ckpt: Path, clips: list[str], mode: str, run: Path, batch: int, pixels: int) -> None:
    """One measurement in this process: ``train`` (the run as `feval video train` does it) or ``hold`` (every clip's
    features extracted into a list and kept)."""
    import torch

    from feval_core.model.config import FEvalConfig
    from feval_core.scoring.scorer import _load_face_encoder
    from feval_core.video.sources import VideoSource
    from feval_core.video.train import VideoTrainConfig, extract, train_video

    torch.set_num_threads(1)
    cfg = VideoTrainConfig(base=str(ckpt / "backbone"), temporal_model=str(ckpt / "temporal"),
                           portrait_model=str(ckpt / "portrait"), portrait_size=64, face_pack="tiny_face",
                           face_root=str(ckpt / "face_pack"), det_size=128, num_clip_frames=8, temporal_tokens=2,
                           max_image_pixels=pixels, lora_rank=4, lora_alpha=8, epochs=1, batch_size=batch)
    face = _load_face_encoder(FEvalConfig.load(ckpt), ckpt, "cpu", None)
    pairs = [(VideoSource("file", c, c), 20.0 + (i * 37) % 60) for i, c in enumerate(clips)]
    t0 = time.perf_counter()
    if mode == "hold":
        from feval_core.video.checkpoint import load_encoders
        from feval_core.video.features import FeatureExtractor

        vcfg = cfg.video_config()
        held, errors = extract(FeatureExtractor(vcfg, *load_encoders(vcfg, None), face), [s for s, _ in pairs])
        assert not errors, errors
        steps = 0
    else:
        res = train_video(cfg, pairs, out=run, face_encoder=face)
        assert res.finished and not res.skipped, res.skipped
        steps = res.steps
    print(json.dumps({"peak_rss_mb": _peak_mb(), "seconds": time.perf_counter() - t0, "steps": steps}))


def write_clips(folder: Path, count: int, frames: int, size: int) -> list[str]:
    import numpy as np

    from feval_core.testing.facepack import draw_tiny_face
    from feval_core.testing.video import write_clip

    paths, q = [], size // 4
    for i in range(count):
        clip = np.empty((frames, size, size, 3), np.uint8)
        for t in range(frames):
            dx = (t * 3 + i) % q
            clip[t] = draw_tiny_face(np.full((size, size, 3), 20 + i % 200, np.uint8),
                                     (q // 2 + dx, q, q // 2 + dx + 2 * q, 3 * q), seed=i)
        paths.append(str(write_clip(folder / f"clip{i:04d}.mp4", clip, fps=25)))
    return paths


def _measure(ckpt: Path, clips: list[str], mode: str, run: Path, args: argparse.Namespace) -> dict:
    listing = run.parent / f"{run.name}.json"
    listing.write_text(json.dumps(clips))
    cmd = [sys.executable, __file__, "--child", str(ckpt), str(listing), mode, str(run), "--batch",
           str(args.batch), "--pixels", str(args.pixels)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=24, help="N: clips of the smaller run")
    ap.add_argument("--factor", type=int, default=4, help="the larger run has factor x N clips")
    ap.add_argument("--frames", type=int, default=16, help="frames per clip")
    ap.add_argument("--size", type=int, default=480, help="square frame side of the clips (pixels)")
    ap.add_argument("--batch", type=int, default=4, help="clips per optimizer step")
    ap.add_argument("--pixels", type=int, default=112 * 112,
                    help="max_image_pixels of the backbone (key frames are still stored at 448 px)")
    ap.add_argument("--no-hold", action="store_true", help="skip the features-held-in-a-list comparison")
    ap.add_argument("--child", nargs=4, metavar=("CKPT", "CLIPS", "MODE", "RUN"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        ckpt, listing, mode, run = args.child
        child(Path(ckpt), json.loads(Path(listing).read_text()), mode, Path(run), args.batch, args.pixels)
        return
    from feval_core.testing.video import make_tiny_video_checkpoint

    counts = (args.clips, args.clips * args.factor)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = make_tiny_video_checkpoint(root / "ckpt", samples=False)
        clips = write_clips(root, counts[1], args.frames, args.size)
        rows = {}
        for n in counts:
            rows[("train", n)] = _measure(ckpt, clips[:n], "train", root / f"run{n}", args)
            cache = list((root / f"run{n}" / "feature_cache").glob("*.safetensors"))
            rows[("train", n)]["cache_mb"] = sum(f.stat().st_size for f in cache) / 1e6
            if not args.no_hold:
                rows[("hold", n)] = _measure(ckpt, clips[:n], "hold", root / f"hold{n}", args)
    print(f"clips of {args.frames} frames at {args.size}x{args.size} (h264); 8 key frames at 448 px, all four "
          f"branches, batch {args.batch}, one epoch, 1 torch thread; peak RSS per fresh process")
    print(f"| run | {counts[0]} clips (MB) | {counts[1]} clips (MB) | ratio |\n|---|---:|---:|---:|")
    for mode, name in (("train", "training run (features on disk, read per batch)"),
                       ("hold", "features of every clip held in a list (the loop before)")):
        if (mode, counts[0]) in rows:
            a, b = rows[(mode, counts[0])]["peak_rss_mb"], rows[(mode, counts[1])]["peak_rss_mb"]
            print(f"| {name} | {a:.1f} | {b:.1f} | **{b / a:.3f}** |")
    t0, t1 = rows[("train", counts[0])], rows[("train", counts[1])]
    print(f"training: {t0['steps']} / {t1['steps']} steps in {t0['seconds']:.0f} / {t1['seconds']:.0f} s; feature "
          f"cache on disk {t0['cache_mb']:.0f} / {t1['cache_mb']:.0f} MB")


if __name__ == "__main__":
    main()
