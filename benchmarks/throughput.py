#!/usr/bin/env python
"""Scoring throughput of F-Eval at real size (random weights, no download), next to the naive path.

Builds Qwen2.5-VL-7B- and 3B-class backbones from hand-written configs, directly on the device in bf16, with
four LoRA experts (r=16 on the LLM FFN) and K=4 face tokens, and scores synthetic face JPEGs on all four
dimensions through the real pipeline (``FEvalScorer.iter_scores``: worker threads decode, detect faces and
run the image processor; one vision-tower run per image; rows bucketed by length). For each batch size and
image size it reports images/s, model FLOPs utilisation (analytic FLOPs over the bf16 matmul peak measured
in the same run), peak GPU memory, the share of time the model waited on the CPU side, and the ratio to
the naive path (one image, one dimension, one forward at a time, fp32). Time does not depend on weight
values, so random weights time the same as trained ones.

    python benchmarks/throughput.py --preset real --json throughput.json      # GPU: 7B and 3B
    python benchmarks/throughput.py --preset small                            # CPU smoke run (CI)

Prints a Markdown table and writes the same numbers as JSON. The parts (backbones, FLOPs, measurements, the
table) live in ``benchmarks/speed/``; ``benchmarks/gpu_suite.py`` runs the same measurements in one budgeted
command.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from benchmarks.speed.backbones import SPECS, BackboneSpec, build_scorer, write_images  # noqa: E402,F401
from benchmarks.speed.measure import matmul_peak, per_run  # noqa: E402
from benchmarks.speed.report import device_name, markdown  # noqa: E402
from benchmarks.speed.run import BackboneRun  # noqa: E402

logger = logging.getLogger("feval.bench")

PRESETS = {  # backbones, batch sizes, image sizes, images per measurement, naive images, face detector size
    "real": (["7b", "3b"], [1, 4, 8, 16, 32], [512, 1024], 64, 4, 640),
    "small": (["small"], [1, 4], [112, 224], 8, 2, 160),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), help="real (GPU: 7B + 3B) or small (CPU); default: by device")
    p.add_argument("--backbones", nargs="+", choices=sorted(SPECS))
    p.add_argument("--batch-sizes", nargs="+", type=int)
    p.add_argument("--image-sizes", nargs="+", type=int)
    p.add_argument("--images", type=int, help="images per measurement (at least 3 batches)")
    p.add_argument("--naive-images", type=int, help="images timed on the naive path")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, flash_attention_2, eager)")
    p.add_argument("--max-pixels", type=int, help="VLM input resolution cap (default: the largest image size^2)")
    p.add_argument("--workers", type=int, help="prefetch threads (default: the scorer's)")
    p.add_argument("--max-batch-tokens", type=int, help="cap on padded tokens per LLM pass (default: none)")
    p.add_argument("--face-root", help="insightface root with models/<pack> (default: a tiny pack written now)")
    p.add_argument("--face-pack", default="tiny_face")
    p.add_argument("--det-size", type=int, help="face detector input size (default: 640 real, 160 small)")
    p.add_argument("--ablations", action="store_true", help="also time the fast path with each speed-up off")
    p.add_argument("--no-naive", action="store_true", help="skip the naive path")
    p.add_argument("--json", help="write results here")
    return p.parse_args(argv)


def run_meta(device: str, dtype: torch.dtype, peak: float, attn: str, face_pack: str, command: str) -> dict[str, Any]:
    """What a results file says about the run besides its rows."""
    import transformers

    return {"device": device, "device_name": device_name(device), "peak_flops": peak,
            "peak_dtype": str(dtype).replace("torch.", ""), "attn": attn, "face_pack": face_pack,
            "torch": torch.__version__, "transformers": transformers.__version__, "command": command,
            "naive": [], "ablations": []}


def write_json(path: str | Path, meta: dict[str, Any], results: list[dict[str, Any]], table: str, **extra: Any) -> None:
    Path(path).write_text(json.dumps({"meta": meta, "results": results, "table": table, **extra}, indent=2,
                                     default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    preset = PRESETS[args.preset or ("real" if device.startswith("cuda") else "small")]
    backbones = args.backbones or preset[0]
    batches = sorted(args.batch_sizes or preset[1])
    sizes = args.image_sizes or preset[2]
    n_images = args.images or preset[3]
    n_naive = args.naive_images if args.naive_images is not None else preset[4]
    det_size = args.det_size or preset[5]
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    max_pixels = args.max_pixels or max(sizes) ** 2
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # the naive fp32 path is plain fp32

    work = Path(tempfile.mkdtemp(prefix="feval-bench-"))
    face_root = Path(args.face_root) if args.face_root else work / "faces"
    if not args.face_root:
        from feval_core.testing.facepack import write_tiny_face_pack

        write_tiny_face_pack(face_root, name=args.face_pack)
    images = {s: write_images(work / f"img{s}", max(per_run(n_images, b) for b in batches) + 1, s) for s in sizes}
    refs = {s: images[s][-1] for s in sizes}

    peak = matmul_peak(device, dtype)
    meta = run_meta(device, dtype, peak, args.attn, args.face_pack if args.face_root else "tiny_face (synthetic)",
                    " ".join(["benchmarks/throughput.py", *(argv if argv is not None else sys.argv[1:])]))
    results: list[dict[str, Any]] = []
    for key in backbones:
        spec = SPECS[key]
        scorer = build_scorer(spec, device=device, dtype=dtype, max_pixels=max_pixels, face_root=face_root,
                              face_pack=args.face_pack, det_size=det_size, attn=args.attn)
        if args.workers is not None:
            scorer.workers = args.workers
        scorer.max_batch_tokens = args.max_batch_tokens
        run = BackboneRun(scorer, spec, device=device, peak=peak, images=images, refs=refs, meta=meta)
        for size in sizes:
            run.measure_size(size, batches, n_images)
            if args.ablations:
                run.ablations(size, n_images)
        if not args.no_naive:
            run.naive(sizes, n_naive)
        results.extend(run.rows)
        del scorer, run
        if device.startswith("cuda"):
            torch.cuda.empty_cache()

    table = markdown(results, meta)
    print(table)
    if args.json:
        write_json(args.json, meta, results, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
