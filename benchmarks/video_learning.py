#!/usr/bin/env python
"""The synthetic video learning task: held-out SRCC of a tiny video model trained on CPU, with and without the
temporal branch, plus ridge probes of the frozen encoders' features (how much of the signal they carry).

Clips of a tiny-pack face drifting right get at most one temporal fault (flicker, jitter, dropped or repeated frames)
and one per-frame fault (blur, noise), each of random severity; MOS = 90 - 40 x (sum of severities) + noise
(:func:`feval_core.testing.video.synthetic_clip`). "temporal subset" = held-out clips without a per-frame fault.

    python benchmarks/video_learning.py --train 240 --val 80 --epochs 10
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
sys.path.insert(0, str(ROOT))


def _parts(root: Path) -> None:
    from feval_core.testing.facepack import write_tiny_face_pack
    from feval_core.testing.tiny import build_tiny_backbone
    from feval_core.testing.video import build_tiny_portrait, build_tiny_temporal

    build_tiny_backbone("qwen2_5_vl", root / "backbone", seed=0, image_size=56, init_std=0.2)
    write_tiny_face_pack(root / "face", name="tiny_face", seed=0)
    build_tiny_temporal(root / "temporal", seed=0)
    build_tiny_portrait(root / "portrait", seed=0)


def ridge_probe(x, mos, n_train: int, mask):
    import numpy as np

    from feval_core.evaluate.metrics import srcc

    x = (x - x[:n_train].mean(0)) / (x[:n_train].std(0) + 1e-6)
    x = np.c_[x, np.ones(len(x))]
    w = np.linalg.solve(x[:n_train].T @ x[:n_train] + 10 * np.eye(x.shape[1]), x[:n_train].T @ mos[:n_train])
    pred = x[n_train:] @ w
    return srcc(pred, mos[n_train:]), srcc(pred[mask], mos[n_train:][mask])


def main() -> None:
    import numpy as np
    import torch

    from feval_core.evaluate.metrics import srcc
    from feval_core.testing.synthetic import SYNTHETIC_LORA_TARGETS
    from feval_core.testing.video import synthetic_video_set
    from feval_core.video.sources import VideoSource
    from feval_core.video.train import VideoTrainConfig, extract, predict, train_video

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=240)
    ap.add_argument("--val", type=int, default=80)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--head-lr", type=float, default=3e-3)
    ap.add_argument("--stage1-fraction", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _parts(root)
        data = synthetic_video_set(args.train + args.val, seed=1)
        mos = np.asarray([m for _, m, _ in data])
        mask = np.asarray([not any(k in ("blur", "noise") for k in f) for _, _, f in data[args.train:]])
        pairs = [(VideoSource("array", f, f"<{i}>", 8.0), m) for i, (f, m, _) in enumerate(data)]
        print(f"{'run':<34} {'val SRCC':>9} {'temporal subset':>16} {'seconds':>8}")
        for branches in (("spatial", "temporal", "portrait"), ("spatial", "portrait")):
            t0 = time.time()
            cfg = VideoTrainConfig(base=str(root / "backbone"), temporal_model=str(root / "temporal"),
                                   portrait_model=str(root / "portrait"), branches=branches, num_key_frames=2,
                                   num_clip_frames=8, temporal_tokens=2, portrait_size=64, frame_side=128,
                                   max_image_pixels=56 * 56, lora_rank=4, lora_alpha=8,
                                   lora_targets=SYNTHETIC_LORA_TARGETS, epochs=args.epochs, batch_size=16,
                                   lr=args.lr, head_lr=args.head_lr, stage1_fraction=args.stage1_fraction)
            res = train_video(cfg, pairs[:args.train], pairs[args.train:])
            feats, _ = extract(res.extractor, [s for s, _ in pairs[args.train:]])
            pred = predict(res.model, feats)
            print(f"{'+'.join(branches):<34} {res.val['srcc']:>9.3f} "
                  f"{srcc(pred[mask], mos[args.train:][mask]):>16.3f} {time.time() - t0:>8.0f}")
            if "temporal" in branches:
                tr_feats, _ = extract(res.extractor, [s for s, _ in pairs[:args.train]])
                temporal = np.stack([f.temporal.flatten().numpy() for f in tr_feats + feats])
                portrait = np.stack([f.portrait.flatten().numpy() for f in tr_feats + feats])
        for name, x in (("ridge probe: frozen temporal feats", temporal), ("ridge probe: frozen portrait feats",
                                                                            portrait)):
            a, b = ridge_probe(x, mos, args.train, mask)
            print(f"{name:<34} {a:>9.3f} {b:>16.3f}")


if __name__ == "__main__":
    main()
