#!/usr/bin/env python
"""What the video feature cache saves: the frozen-feature pass of video training (decode, face pack, temporal
encoder, segmenter) over N clips without the cache, with an empty cache (computes and writes) and with a filled one
(a rerun, a resumed run or a later epoch: reads only), side by side in one process; and the disk the cache takes
per clip. Tiny encoders (the real VideoMAE / Segformer / buffalo_l cost far more per clip), so the ratio here
understates what the cache saves with real ones; decoding is real (h264 at the given size).

    python benchmarks/video_cache.py --clips 12 --frames 150 --size 480
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def write_clips(folder: Path, count: int, frames: int, size: int) -> list[Path]:
    import numpy as np

    from feval_core.testing.facepack import draw_tiny_face
    from feval_core.testing.video import write_clip

    paths = []
    q = size // 4
    for i in range(count):
        clip = np.empty((frames, size, size, 3), np.uint8)
        for t in range(frames):
            dx = (t * 3 + i) % q
            clip[t] = draw_tiny_face(np.full((size, size, 3), 20 + i, np.uint8),
                                     (q // 2 + dx, q, q // 2 + dx + 2 * q, 3 * q), seed=i)
        paths.append(write_clip(folder / f"clip{i:03d}.mp4", clip, fps=30))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--size", type=int, default=480, help="square frame side of the clips (pixels)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from feval_core.model.config import FEvalConfig
    from feval_core.scoring.scorer import _load_face_encoder
    from feval_core.testing.video import make_tiny_video_checkpoint
    from feval_core.video.cache import CACHE_DIR, FeatureCache
    from feval_core.video.checkpoint import load_encoders
    from feval_core.video.config import VideoConfig
    from feval_core.video.features import FeatureExtractor
    from feval_core.video.sources import VideoSource
    from feval_core.video.train import extract

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = make_tiny_video_checkpoint(root / "ckpt", samples=False)
        paths = write_clips(root, args.clips, args.frames, args.size)
        sources = [VideoSource("file", str(p), str(p)) for p in paths]
        vcfg = VideoConfig.load(ckpt)
        vcfg.frame_side, vcfg.num_key_frames = 448, 8  # the training defaults' key frames
        temporal, portrait = load_encoders(vcfg, ckpt)
        face = _load_face_encoder(FEvalConfig.load(ckpt), ckpt, "cpu", None)
        extractor = FeatureExtractor(vcfg, temporal, portrait, face)
        face_setting = {"pack": "tiny_face", "det_size": 128}

        def timed(cache: FeatureCache | None) -> float:
            t0 = time.perf_counter()
            feats, errors = extract(extractor, sources, cache=cache)
            assert not errors and all(f is not None for f in feats), errors
            return time.perf_counter() - t0

        timed(None)  # warm-up (first-call costs of the encoders and the decoder)
        none = timed(None)
        cold = timed(FeatureCache.for_run(root / "run", vcfg, face_setting))
        warm_cache = FeatureCache.for_run(root / "run", vcfg, face_setting)
        warm = timed(warm_cache)
        files = list((root / "run" / CACHE_DIR).glob("*.safetensors"))
        per_clip = sum(f.stat().st_size for f in files) / len(files) / 1e6
    print(f"{args.clips} clips of {args.frames} frames at {args.size}x{args.size} (h264), {vcfg.num_key_frames} key "
          f"frames at <= {vcfg.frame_side} px, branches {','.join(vcfg.branches)}, {args.threads} torch thread(s)")
    print("| frozen-feature pass | seconds | per clip (s) |\n|---|---:|---:|")
    for name, t in (("no cache (decode + encoders)", none), ("empty cache (compute + write)", cold),
                    ("filled cache (read only)", warm)):
        print(f"| {name} | {t:.2f} | {t / args.clips:.3f} |")
    print(f"filled cache / no cache: {warm / none:.3f} (speed-up {none / warm:.1f}x); hits {warm_cache.hits}")
    print(f"disk per clip: {per_clip:.2f} MB ({len(files)} files)")


if __name__ == "__main__":
    main()
