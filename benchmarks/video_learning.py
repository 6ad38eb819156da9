#!/usr/bin/env python
"""The synthetic video learning task: held-out SRCC of a tiny video model trained on CPU with the default schedule
and learning rate, with and without the temporal branch, over one or more training seeds, plus ridge probes (penalty
by 5-fold cross-validation) of what the model sees: the frozen encoders' features and, untrained, the LLM's hidden
state at the scored position.

Clips of a tiny-pack face drifting right get at most one temporal fault (flicker, jitter, dropped or repeated frames)
and one per-frame fault (blur, noise), each of random severity; MOS = 90 - 40 x (sum of severities) + noise
(:func:`feval_core.testing.video.synthetic_clip`). "temporal subset" = held-out clips without a per-frame fault.

    python benchmarks/video_learning.py --train 480 --val 300 --epochs 20
    python benchmarks/video_learning.py --seeds 0,1,2,3 --runs full --no-probes --set '{"lr": 1e-3}'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = {"full": ("spatial", "temporal", "portrait"), "no_temporal": ("spatial", "portrait")}


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=480)
    ap.add_argument("--val", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds (the data is fixed)")
    ap.add_argument("--runs", default="full,no_temporal", help=f"comma-separated, of {sorted(RUNS)}")
    ap.add_argument("--no-probes", action="store_true", help="skip the ridge probes")
    ap.add_argument("--nuisance", action="store_true", help="clips with random speed, start, exposure and flicker "
                                                           "phase (temporal faults not visible in one frame)")
    ap.add_argument("--set", default="{}", help='JSON of VideoTrainConfig overrides, e.g. \'{"schedule": '
                                                 '"regression"}\' (default: the defaults)')
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for the tiny model)")
    return ap.parse_args()


def main() -> None:
    import numpy as np
    import torch

    from feval_core.evaluate.metrics import srcc
    from feval_core.testing.video import (FRAME_FAULTS, TEMPORAL_FAULTS, prepare_video_learning_parts,
                                          synthetic_video_set, temporal_only, video_learning_config)
    from feval_core.video.sources import VideoSource
    from feval_core.video.train import train_video

    args = _args()
    torch.set_num_threads(args.threads)
    n, seeds, runs = args.train, [int(s) for s in args.seeds.split(",")], args.runs.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        root = prepare_video_learning_parts(tmp)
        data = synthetic_video_set(n + args.val, seed=1, nuisance=args.nuisance)
        mos = np.asarray([m for _, m, _ in data])
        mask = np.asarray([temporal_only(f) for _, _, f in data[n:]])
        # per fault: held-out clips with that fault alone or none (ranks its severity against clean clips)
        alone = {k: np.asarray([set(f) <= {k} for _, _, f in data[n:]]) for k in TEMPORAL_FAULTS + FRAME_FAULTS}
        pairs = [(VideoSource("array", f, f"<{i}>", 8.0), m) for i, (f, m, _) in enumerate(data)]
        print(f"{args.train} train / {args.val} held-out clips ({mask.sum()} temporal-only), {args.epochs} epochs, "
              f"seeds {seeds}, overrides {args.set}")
        print(f"{'run':<44} {'val SRCC':>9} {'temporal subset':>16} {'seconds':>8}")
        table: dict[str, list[tuple[float, float]]] = {r: [] for r in runs}
        last = None
        for seed in seeds:
            for run in runs:
                t0 = time.time()
                cfg = video_learning_config(root, RUNS[run], epochs=args.epochs, seed=seed, **json.loads(args.set))
                res = train_video(cfg, pairs[:n], pairs[n:])
                pred = res.val_predictions
                a, b = srcc(pred, mos[n:]), srcc(pred[mask], mos[n:][mask])
                table[run].append((a, b))
                print(f"{f'trained: {run}, seed {seed}':<44} {a:>9.3f} {b:>16.3f} {time.time() - t0:>8.0f}",
                      flush=True)
                print("    per fault (alone or clean, n): " + ", ".join(
                    f"{k} {srcc(pred[m], mos[n:][m]):.3f} ({m.sum()})" for k, m in alone.items()), flush=True)
                if run == "full":
                    last = (cfg, res.extractor)
        for run, vals in table.items():
            if len(vals) > 1:
                arr = np.asarray(vals)
                print(f"{f'{run}: mean / min over {len(vals)} seeds':<44} {arr[:, 0].mean():>9.3f} "
                      f"{arr[:, 1].mean():>16.3f}   min {arr[:, 0].min():.3f} / {arr[:, 1].min():.3f}")
        if not args.no_probes and last is not None:
            _probes(last, pairs, mos, mask, n, seeds[0])


def _probes(last: tuple, pairs: list, mos, mask, n: int, seed: int) -> None:
    import numpy as np
    import torch

    from feval_core.train.probe import ridge_probe
    from feval_core.video.checkpoint import build_video_model
    from feval_core.video.train import extract

    cfg, extractor = last

    def probe(name: str, x: np.ndarray) -> None:
        a = ridge_probe(x[:n], mos[:n], x[n:], mos[n:])
        b = ridge_probe(x[:n], mos[:n], x[n:][mask], mos[n:][mask])
        print(f"{name:<44} {a:>9.3f} {b:>16.3f}")

    feats, _ = extract(extractor, [s for s, _ in pairs])
    torch.manual_seed(seed)
    untrained = build_video_model(cfg.feval_config(), cfg.video_config(), extractor.temporal, extractor.portrait)
    with torch.no_grad():
        hidden = np.concatenate([untrained.score_clips(feats[s:s + 16]).hidden.float().numpy()
                                 for s in range(0, len(feats), 16)])
    probe("ridge probe: frozen temporal encoder feats", np.stack([f.temporal.flatten().numpy() for f in feats]))
    probe("ridge probe: frozen portrait feats", np.stack([f.portrait.flatten().numpy() for f in feats]))
    probe("ridge probe: untrained model, answer hidden", hidden)


if __name__ == "__main__":
    main()
