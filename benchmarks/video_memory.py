#!/usr/bin/env python
"""Flat memory in clip length: peak RSS of scoring one clip of N frames and one of 10 x N frames (tiny video
checkpoint, CPU, streamed PyAV decoding). Each clip is scored in a fresh process (its own peak RSS); the clips are
written frame by frame, so neither the writer nor the scorer ever holds a whole clip. The target: the longer clip's
peak is at most 1.1 x the shorter one's.

    python benchmarks/video_memory.py --frames 300 --factor 10 --size 720
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


def write_long_clip(path: Path, frames: int, size: int, fps: int = 30) -> None:
    """A face moving around, encoded frame by frame (h264)."""
    import av
    import numpy as np

    from feval_core.testing.facepack import draw_tiny_face

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        q = size // 4
        for t in range(frames):
            dx = (t * 3) % q
            img = draw_tiny_face(np.full((size, size, 3), 20, np.uint8), (q // 2 + dx, q, q // 2 + dx + 2 * q, 3 * q))
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def child(ckpt: str, clip: str) -> None:
    from feval_core.video.scorer import VideoScorer

    t0 = time.perf_counter()
    row = VideoScorer.from_pretrained(ckpt, workers=1).score([clip])[0]
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "seconds": time.perf_counter() - t0, "error": row["error"], "frames": None}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--factor", type=int, default=10)
    ap.add_argument("--size", type=int, default=720)
    ap.add_argument("--child", nargs=2, metavar=("CKPT", "CLIP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    from feval_core.testing.video import make_tiny_video_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        ckpt = make_tiny_video_checkpoint(tmp_path / "ckpt", samples=False)
        cfg = json.loads((ckpt / "video_config.json").read_text())
        cfg["limits"]["max_seconds"] = 3600.0
        (ckpt / "video_config.json").write_text(json.dumps(cfg))
        results = {}
        for n in (args.frames, args.frames * args.factor):
            clip = tmp_path / f"clip_{n}.mp4"
            write_long_clip(clip, n, args.size)
            out = subprocess.run([sys.executable, __file__, "--child", str(ckpt), str(clip)], check=True,
                                 capture_output=True, text=True).stdout.strip().splitlines()[-1]
            results[n] = json.loads(out)
            results[n]["file_mb"] = clip.stat().st_size / 1e6
        a, b = results[args.frames], results[args.frames * args.factor]
        print(f"{'frames':>8} {'file MB':>8} {'peak RSS MB':>12} {'seconds':>8} error")
        for n, r in results.items():
            print(f"{n:>8} {r['file_mb']:>8.1f} {r['peak_rss_mb']:>12.1f} {r['seconds']:>8.1f} {r['error']}")
        ratio = b["peak_rss_mb"] / a["peak_rss_mb"]
        print(f"peak RSS ratio ({args.factor}x frames): {ratio:.3f} (target <= 1.10) -> "
              f"{'PASS' if ratio <= 1.10 else 'FAIL'}")


if __name__ == "__main__":
    main()
