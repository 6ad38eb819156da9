#!/usr/bin/env python
"""Put the figures of a ``benchmarks/gpu_suite.py`` run into README's "Throughput on one GPU" table.

    python benchmarks/readme_table.py gpu-suite.json                 # rewrites README.md between the markers
    python benchmarks/readme_table.py gpu-suite.json --print         # shows the block instead

Everything between ``<!-- gpu-suite:begin -->`` and ``<!-- gpu-suite:end -->`` is replaced: one row per
measurement (backbone, batch, image size, img/s, MFU, peak GPU memory, ratio to the naive path, CPU wait, GPU),
then the GPU, date and command of the run, the ablations, the differentiable-reward and face-detection ratios,
the tables of the extra sections (ViT-FIQA, face video) and the steps the budget skipped. A dry run's JSON (CPU
figures) is refused unless ``--allow-dry-run``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- gpu-suite:begin -->", "<!-- gpu-suite:end -->"
README = Path(__file__).resolve().parents[1] / "README.md"


def _num(value: Any, fmt: str, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:{fmt}}{suffix}"


def render(data: dict[str, Any]) -> str:
    """The Markdown block (without the markers) for a gpu_suite results file."""
    meta = data["meta"]
    gpu, date = meta["device_name"], meta.get("date", "?")[:10]
    mem = "peak GPU mem (GiB)" if meta["device"].startswith("cuda") else "peak RSS (GiB)"
    lines = [f"| backbone | batch | image px | img/s | MFU | {mem} | × naive | CPU wait | GPU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in data["results"]:
        lines.append(f"| {r['backbone']} | {r['batch']} | {r['image_px']} | {_num(r['img_per_s'], '.2f')} | "
                     f"{_num(100 * r['mfu'], '.1f', '%')} | {_num(r['peak_mem_gib'], '.1f')} | "
                     f"{_num(r.get('ratio_to_naive'), '.1f', '×')} | {_num(100 * r['cpu_wait'], '.1f', '%')} | {gpu} |")
    if not data["results"]:
        lines.append("| (no measurement finished) | | | | | | | | |")
    status = "" if meta.get("complete") else " The run did not finish: these are the steps it completed."
    lines += ["", f"Measured on **{gpu}** on {date} with `python {meta['command']}` ({meta['elapsed_s']:.0f} s of a "
                  f"{meta['budget_s']:.0f} s budget; torch {meta['torch']}, transformers {meta['transformers']}; "
                  f"{meta['peak_dtype']} matmul peak {meta['peak_flops'] / 1e12:.3g} TFLOP/s; attention "
                  f"{meta['attn']}; {meta.get('workers', '?')} prefetch workers on {meta.get('cpu_cores', '?')} CPU "
                  f"cores; faces: {meta['face_pack']}).{status}"]
    for n in meta.get("naive", []):
        lines.append(f"- Naive path ({n['backbone']}, {n['image_px']} px, fp32, one image × one dimension per "
                     f"forward): {n['img_per_s']:.3f} img/s")
    for a in meta.get("ablations", []):
        fast = a["img_per_s"].get("fast path") or math.nan
        parts = ", ".join(f"{k} {v:.2f} ({v / fast:.2f}×)" for k, v in a["img_per_s"].items() if k != "fast path")
        lines.append(f"- Ablations ({a['backbone']}, batch {a['batch']}, {a['image_px']} px): fast path {fast:.2f} "
                     f"img/s; {parts}")
    sections = data.get("sections", {})
    if "differentiable_reward" in sections:
        r = sections["differentiable_reward"]
        lines.append(f"- Differentiable reward, forward + backward ({r['images']} images, {r['image_px']} px): vision "
                     f"once per image is {r['ratio']:.2f}× as fast as once per (image, dimension) row")
    if "detect_workers" in sections:
        d = sections["detect_workers"]
        lines.append(f"- Face detection + ArcFace on the CPU (SCRFD-10G + iResNet-50 class, det {d['det_size']} px): "
                     f"2 workers {d['ratio']:.2f}× 1 worker (a 1-thread session each), "
                     f"{d.get('ratio_vs_old_lock', math.nan):.2f}× 2 workers under the old lock")
    for name, title in (("fiqa", "Face utility (ViT-FIQA)"), ("video", "Face video quality (FVQ-Rater)")):
        section = sections.get(name, {})
        if section.get("status") == "measured":
            table = section.get("table") or json.dumps(section)
            lines += ["", f"{title}, {section.get('dtype', '?')}{_clip_note(section.get('clip'))}:", "", table]
    for s in meta.get("skipped", []):
        lines.append(f"- Not measured (time budget): {s['step']}")
    return "\n".join(lines)


def _clip_note(clip: dict[str, Any] | None) -> str:
    if not clip:
        return ""
    return (f"; clips of {clip['frames']} frames, {clip['px']} px, {clip['fps']} fps (mp4, decoded by the prefetch "
            f"workers), {clip['key_frames']} key frames + a {clip['clip_frames']}-frame clip each")


def replace_block(text: str, block: str) -> str:
    """``text`` with the part between the markers replaced by ``block``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {BEGIN} ... {END} block; put the two markers around the throughput table")
    return text[: start + len(BEGIN)] + "\n" + block + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="the JSON file gpu_suite.py wrote")
    p.add_argument("--readme", default=str(README), help="the README to update (default: this checkout's)")
    p.add_argument("--print", action="store_true", help="print the block instead of writing the README")
    p.add_argument("--allow-dry-run", action="store_true", help="accept a --dry-run file (CPU figures, tests only)")
    args = p.parse_args(argv)
    data = json.loads(Path(args.results).read_text())
    if data.get("meta", {}).get("suite") != "gpu_suite":
        print(f"readme_table: {args.results} is not a gpu_suite.py results file", file=sys.stderr)
        return 2
    if data["meta"].get("dry_run") and not args.allow_dry_run:
        print(f"readme_table: {args.results} is from a --dry-run (CPU, tiny models): README's table takes GPU runs "
              "only; run python benchmarks/gpu_suite.py on a GPU", file=sys.stderr)
        return 2
    block = render(data)
    if args.print:
        print(block)
        return 0
    readme = Path(args.readme)
    try:
        readme.write_text(replace_block(readme.read_text(), block))
    except ValueError as err:
        print(f"readme_table: {readme}: {err}", file=sys.stderr)
        return 2
    print(f"updated {readme} with {len(data['results'])} rows from {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
