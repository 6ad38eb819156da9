"""MR-FIQA labels on synthetic sets with known degradation levels, and a ViT-FIQA trained on them alone (CPU, offline).

1. Two sets drawn for the tiny face pack (:func:`feval_core.testing.mrfiqa.write_level_set`: every identity's first
   image clean, the others with 1-3 of yaw, blur, downsampling, noise, JPEG, occlusion at levels 1-4). The rank part
   knows only MR-FIQA's factors (yaw, downsampling, blur). SRCC with the true severity of each part and of the
   combinations: equal weights, and weights fitted on set A then used on set B (held out).
2. A tiny ViT-FIQA trained on set A's MR labels alone (``--labels``: the quality head never sees the CR label; the
   identity head still learns the identities, as any ViT-FIQA's does), then EDC pAUC against random discard on the
   test set of ``benchmarks/fiqa_edc.py`` (40 new identities, its own degradation mix). A level set is no EDC test set:
   at the strongest downsampling the tiny recognizer maps different people to near-equal embeddings, so the threshold
   at FMR 1e-3 rises to ~0.99 and FNMR starts at ~94% (measured), leaving nothing for any quality to sort.

    python benchmarks/fiqa_mr.py
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from feval_core.faces.encoder import FaceEncoder
from feval_core.fiqa.evaluate import evaluate_dataset
from feval_core.fiqa.mrlabels import PARTS, MRWeights, label_set, measure_parts, read_label_input, write_labels
from feval_core.fiqa.train import train_fiqa
from feval_core.fiqa.train_config import FIQATrainConfig
from feval_core.testing.facepack import write_tiny_face_pack
from feval_core.testing.fiqa import TINY_SHAPES, write_identity_set
from feval_core.testing.mrfiqa import write_level_set


def label_table(root: Path, enc: FaceEncoder, args: argparse.Namespace) -> Path:
    sets = {}
    for name, seed, first in (("A", 0, 0), ("B", 1, 50_000)):
        items = read_label_input(write_level_set(root / name, args.ids, args.per_id, seed=seed, first_identity=first))
        sets[name] = (items, *measure_parts(items, enc, None))
    fitted = label_set(*sets["A"], fit=True)
    write_labels(fitted, root / "A" / "labels.jsonl")
    rows = [("A", "equal weights", label_set(*sets["A"]).weights.srcc_vs_severity),
            ("A", f"fitted on A {fitted.weights.weights}", fitted.weights.srcc_vs_severity)]
    held = label_set(*sets["B"], weights=MRWeights(weights=dict(fitted.weights.weights)))
    rows += [("B", "equal weights", label_set(*sets["B"]).weights.srcc_vs_severity),
             ("B", "weights fitted on A (held out)", held.weights.srcc_vs_severity)]
    n_a = sum(e is None for e in sets["A"][2])
    print(f"\n## MR labels: SRCC with -severity ({n_a} of {len(sets['A'][0])} faces detected in A; no VL model here)\n")
    print("| set | combination | " + " | ".join(PARTS) + " | label |\n|---|---|---|---|---|---|")
    for s, how, r in rows:
        print(f"| {s} | {how} | " + " | ".join(f"{r[p]:.3f}" if r[p] == r[p] else "n/a" for p in PARTS)
              + f" | {r['label']:.3f} |")
    r = held.weights.srcc_vs_severity
    ok = r["label"] >= 0.7 and all(r["label"] > r[p] for p in PARTS if r[p] == r[p])
    print(f"\ndone-when check on held-out set B (label SRCC >= 0.7 and above each part): {'PASS' if ok else 'FAIL'}")
    return root / "A" / "labels.jsonl"


def train_on_labels(root: Path, labels: Path, packs: Path, args: argparse.Namespace) -> None:
    test = root / "test"  # the EDC yardstick of benchmarks/fiqa_edc.py: same identities, degradations and seed
    write_identity_set(test, args.test_ids, 12, first_identity=100_000, seed=1000)
    cfg = FIQATrainConfig(data=str(root / "A"), labels=str(labels), out=str(root / "run"), preset="vit_t",
                          embed_dim=TINY_SHAPES["embed_dim"], depth=TINY_SHAPES["depth"],
                          num_heads=TINY_SHAPES["num_heads"], num_features=TINY_SHAPES["num_features"],
                          face_pack="tiny_face", face_root=str(packs), det_size=128, batch_size=args.batch_size,
                          epochs=args.epochs, lr=args.lr, scale=32.0, flip=False, seed=0, progress=False,
                          log_every=50, save_every=10_000)
    t0 = time.time()
    result = train_fiqa(cfg)
    report = evaluate_dataset(data=test, model=result.out, face_pack="tiny_face", face_root=packs, det_size=128,
                              fmr=args.fmr, seed=0, progress=False)
    print(f"\n## ViT-FIQA trained on MR labels only: {result.steps} steps in {time.time() - t0:.0f} s; EDC on "
          f"{args.test_ids} new identities\n")
    print(report.format())
    row = {r["method"]: r for r in report.rows}["ViT-FIQA utility"]
    ok = row["ratio_20"] < 1 and row["ratio_30"] < 1
    print(f"\ndone-when check (pAUC below random discard at 20% and 30%): {'PASS' if ok else 'FAIL'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ids", type=int, default=60)
    p.add_argument("--test-ids", type=int, default=40)
    p.add_argument("--per-id", type=int, default=10)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--fmr", type=float, default=1e-3)
    p.add_argument("--skip-train", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    np.seterr(all="ignore")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_tiny_face_pack(root / "face_pack")
        enc = FaceEncoder("tiny_face", root=root / "face_pack", det_size=(128, 128))
        labels = label_table(root, enc, args)
        if not args.skip_train:
            train_on_labels(root, labels, root / "face_pack", args)


if __name__ == "__main__":
    main()
