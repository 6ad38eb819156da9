"""EDC benchmark of ViT-FIQA on a synthetic identity set (tiny face pack, CPU, offline).

Trains the tiny ViT-FIQA (arcface_torch ViT shapes at width 32, depth 2) on faces of 60 identities drawn for the
tiny face pack, with degradations that make its recognizer fail (blur, occlusion, a dark band, another identity
blended in) and some that do not (noise, dimming); then evaluates on 40 other identities: EDC pAUC at 20% / 30%
discard (FNMR at FMR 1e-3, comparisons by the tiny pack's recognizer) of ViT-FIQA's utility beside the detector's
confidence, the embedding norm and random discard. Prints one table per seed and the "done when" check.

    python benchmarks/fiqa_edc.py --seeds 0,1
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from feval_core.fiqa.evaluate import evaluate_dataset
from feval_core.fiqa.train import train_fiqa
from feval_core.fiqa.train_config import FIQATrainConfig
from feval_core.testing.facepack import write_tiny_face_pack
from feval_core.testing.fiqa import TINY_SHAPES, write_identity_set


def run(seed: int, root: Path, args: argparse.Namespace) -> dict:
    packs = root / "face_pack"
    write_tiny_face_pack(packs)
    train_dir, test_dir = root / f"train{seed}", root / f"test{seed}"
    write_identity_set(train_dir, args.train_ids, args.per_id, first_identity=0, seed=seed)
    write_identity_set(test_dir, args.test_ids, args.per_id, first_identity=100_000, seed=seed + 1000)
    cfg = FIQATrainConfig(data=str(train_dir), out=str(root / f"run{seed}"), preset="vit_t",
                          embed_dim=TINY_SHAPES["embed_dim"], depth=TINY_SHAPES["depth"],
                          num_heads=TINY_SHAPES["num_heads"], num_features=TINY_SHAPES["num_features"],
                          face_pack="tiny_face", face_root=str(packs), det_size=128, batch_size=args.batch_size,
                          epochs=args.epochs, lr=args.lr, scale=args.scale, flip=False, seed=seed, progress=False,
                          log_every=50, save_every=10_000)
    t0 = time.time()
    result = train_fiqa(cfg)
    train_s = time.time() - t0
    report = evaluate_dataset(data=test_dir, model=result.out, face_pack="tiny_face", face_root=packs, det_size=128,
                              fmr=args.fmr, seed=seed, progress=False)
    rows = {r["method"]: r for r in report.rows}
    fiqa, det = rows["ViT-FIQA utility"], rows["detector confidence"]
    ok = fiqa["ratio_30"] <= 0.7 and fiqa["pauc_30"] < det["pauc_30"]
    print(f"\n## seed {seed}: trained {result.steps} steps in {train_s:.0f} s "
          f"(final identity accuracy {result.history[-1]['acc']:.2f})\n")
    print(report.format())
    verdict = "PASS" if ok else "FAIL"
    print(f"\ndone-when check (ViT-FIQA pAUC@30% <= 0.7 x random and < detector confidence): {verdict}")
    return {"seed": seed, "steps": result.steps, "train_seconds": train_s, "rows": report.rows,
            "counts": report.counts, "threshold": report.threshold, "pass": ok}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0")
    p.add_argument("--train-ids", type=int, default=60)
    p.add_argument("--test-ids", type=int, default=40)
    p.add_argument("--per-id", type=int, default=12)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--scale", type=float, default=32.0)
    p.add_argument("--fmr", type=float, default=1e-3)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            results.append(run(seed, Path(tmp), args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
