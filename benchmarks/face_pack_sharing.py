#!/usr/bin/env python
"""One face pack per process: peak memory of loading F-Eval + ViT-FIQA + the landmark pre-filter on the same pack,
with the shared encoder (``feval_core.faces.registry``) against one encoder each (the old path), side by side.

Each way runs in a fresh process that imports everything first, then loads the three scorers; the figures are the
resident memory after the imports and after the loads, the peak RSS (``ru_maxrss``), and the ONNX Runtime sessions. The
pack has the real networks' sizes and compute (SCRFD-10G detector, iResNet-50 ArcFace, random weights:
``feval_core.testing.facepack_sized``); the F-Eval LMM and ViT-FIQA are the tiny test models, so the loads' growth
is almost all face pack.

    python benchmarks/face_pack_sharing.py              # the full-size pack
    python benchmarks/face_pack_sharing.py --scale 0.5
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

logger = logging.getLogger("feval.bench")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_mb() -> float:
    """Resident memory now (Linux ``/proc``)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def _setup(tmp: Path, scale: float) -> None:
    import numpy as np

    from feval_core.fiqa.landmarks import feature_names
    from feval_core.fiqa.prefilter import LandmarkPrefilter, PrefilterConfig, fit_forest
    from feval_core.model.config import FaceEncoderConfig
    from feval_core.testing.facepack_sized import SIZED_PACK_NAME, write_sized_face_pack
    from feval_core.testing.fiqa import make_tiny_fiqa
    from feval_core.testing.tiny import make_tiny_checkpoint

    root = tmp / "packs"
    write_sized_face_pack(root, scale=scale)
    face = {"pack": SIZED_PACK_NAME, "root": str(root), "det_size": 640, "det_thresh": 0.5}
    for folder, name in ((make_tiny_checkpoint(tmp / "ckpt"), "feval_config.json"),
                         (make_tiny_fiqa(tmp / "fiqa"), "fiqa_config.json")):
        config = json.loads((Path(folder) / name).read_text())
        config["face"].update(face)
        (Path(folder) / name).write_text(json.dumps(config))
    cfg = PrefilterConfig(n_estimators=10, max_depth=4, min_samples_leaf=1, face=FaceEncoderConfig(**face))
    rng = np.random.default_rng(0)
    onnx_bytes = fit_forest(rng.normal(size=(64, len(feature_names(5)))).astype(np.float32),
                            rng.uniform(0, 100, 64), cfg)
    LandmarkPrefilter(cfg, onnx_bytes).save_pretrained(tmp / "pf", onnx_bytes)


class _Forgetful(dict):
    """A registry that never finds an encoder: every user loads its own (the old path)."""

    def get(self, key, default=None):  # noqa: ANN001, ANN201
        return default

    def __setitem__(self, key, value) -> None:  # noqa: ANN001
        pass


def _child(tmp: Path, way: str) -> None:
    import onnxruntime

    from feval_core import FEvalScorer
    from feval_core.faces import registry
    from feval_core.fiqa.prefilter import LandmarkPrefilter
    from feval_core.fiqa.scorer import FIQAScorer

    created = [0]
    original = onnxruntime.InferenceSession.__init__

    def counting(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        created[0] += 1
        original(self, *args, **kwargs)

    onnxruntime.InferenceSession.__init__ = counting
    if way == "separate":
        registry._encoders = _Forgetful()
    import insightface.app  # noqa: F401  (imported before the baseline, as the scorers would)

    before = _rss_mb()
    feval = FEvalScorer.from_pretrained(tmp / "ckpt", device="cpu")
    fiqa = FIQAScorer.from_pretrained(tmp / "fiqa", device="cpu")
    pf = LandmarkPrefilter.from_pretrained(tmp / "pf")
    encoders = len({id(feval.face_encoder), id(fiqa.face_encoder), id(pf.face_encoder)})
    print(json.dumps({"way": way, "imports_mb": before, "rss_mb": _rss_mb(), "peak_mb": _peak_mb(),
                      "sessions": created[0], "encoders": encoders}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="width of the sized pack's networks (1 = real)")
    parser.add_argument("--child", choices=["shared", "separate"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.child:
        _child(args.dir, args.child)
        return
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        _setup(tmp, args.scale)
        rows = {}
        for way in ("separate", "shared"):
            out = subprocess.run([sys.executable, __file__, "--child", way, "--dir", str(tmp)], check=True,
                                 capture_output=True, text=True).stdout
            rows[way] = json.loads(out.strip().splitlines()[-1])
    print(f"sized face pack (scale {args.scale}), F-Eval + ViT-FIQA + pre-filter loaded in a fresh process")
    print(f"{'way':<10}{'encoders':>9}{'sessions':>9}{'RSS after imports':>18}{'after loads':>12}{'held by loads':>14}"
          f"{'peak RSS':>10}  (MB)")
    for way, r in rows.items():
        print(f"{way:<10}{r['encoders']:>9}{r['sessions']:>9}{r['imports_mb']:>18.0f}{r['rss_mb']:>12.0f}"
              f"{r['rss_mb'] - r['imports_mb']:>14.0f}{r['peak_mb']:>10.0f}")
    sep, sh = rows["separate"], rows["shared"]
    print(f"shared / separate: peak RSS {sh['peak_mb'] / sep['peak_mb']:.2f}, memory held by the loads "
          f"{(sh['rss_mb'] - sh['imports_mb']) / (sep['rss_mb'] - sep['imports_mb']):.2f}")


if __name__ == "__main__":
    main()
