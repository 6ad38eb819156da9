"""``feval fiqa label|synth|prefilter``: MR-FIQA labels without raters, a synthetic set from a diffusers pipeline,
and the landmark pre-filter (random forest in ONNX).

::

    feval fiqa synth --pipeline models/sd15 --identities 500 --out synth/     # identity folders + manifest.jsonl
    feval fiqa label synth/ --vl clip:models/clip-vit-b16 --fit-weights --out synth/labels.jsonl
    feval fiqa train --data synth/ --labels synth/labels.jsonl --out runs/vit-fiqa-mr
    feval fiqa prefilter train --labels synth/labels.jsonl --out models/prefilter
    feval fiqa prefilter score photos/ --model models/prefilter --threshold 40
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from .checks import UsageError, check_device, check_file, check_folder, check_min, check_out_file, check_out_folder
from .main import EXIT_OK, EXIT_SOME_FAILED


def _face_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--face-pack", default="buffalo_l", help="insightface pack that finds (and embeds) faces")
    p.add_argument("--face-root", help="folder holding models/<pack>")
    p.add_argument("--det-size", type=int, default=640)


def add_mr_parsers(fsub: Any) -> None:
    p = fsub.add_parser("label", help="MR-FIQA quality labels (0-100) without raters: recognition, vision-language "
                        "and degradation-rank references, each part in the output")
    p.add_argument("data", help="identity folders (DATA/<identity>/<image>; DATA/manifest.jsonl is used if present) "
                   "or a JSON Lines manifest {image, identity, ref?, levels?, severity?}")
    p.add_argument("--out", required=True, help="labels, JSON Lines (mr_weights.json is written beside it)")
    p.add_argument("--vl", default="none", help="vision-language part: clip:PATH (CLIP-style model), feval:PATH "
                   "(F-Eval checkpoint or plain VLM, zero-shot quality) or none")
    p.add_argument("--rank-factors", default="yaw,downsample,blur",
                   help="known degradation factors ranked by level (MR-FIQA: yaw, downsample, blur)")
    wg = p.add_mutually_exclusive_group()
    wg.add_argument("--fit-weights", action="store_true", help="choose the weights of the parts by SRCC with the "
                    "set's known 'severity' (a `feval fiqa synth` set)")
    wg.add_argument("--weights", help="mr_weights.json of an earlier (fitted) run, or embedding=W,vl=W,rank=W")
    p.add_argument("--feval-manifest", help="also write an F-Eval training manifest (mos.quality = the label) for "
                   "`feval train`")
    p.add_argument("--device", help="cpu, cuda, cuda:N (the vision-language model)")
    _face_args(p)
    p.set_defaults(func=cmd_label)

    p = fsub.add_parser("synth", help="a labelled-ready FIQA set from your diffusers pipeline: identities by seed, "
                        "pose through the prompt, blur/downsampling/noise/JPEG/occlusion at known levels")
    from ..fiqa.synth import SynthConfig

    p.add_argument("--pipeline", required=True, help="diffusers pipeline folder or hub id (safetensors)")
    p.add_argument("--out", required=True, help="folder for OUT/<identity>/<n>.png and manifest.jsonl")
    for f in dataclasses.fields(SynthConfig):
        if f.name in ("pipeline",):
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = {"factors": str, "negative_prompt": str}.get(f.name, type(f.default) if f.default is not None else str)
        default = ",".join(f.default_factory()) if f.name == "factors" else f.default
        p.add_argument(flag, type=kind, default=default, help=f.metadata.get("help"))
    p.add_argument("--device", help="cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"])
    p.set_defaults(func=cmd_synth)

    pf = fsub.add_parser("prefilter", help="landmark + random-forest pre-filter (ONNX): train on any label, score")
    psub = pf.add_subparsers(dest="prefilter_command", required=True)
    t = psub.add_parser("train", help="fit the forest on a labels file and export it to ONNX")
    t.add_argument("--labels", required=True, help="JSON Lines {image, <label>: number} (fiqa label, score --fiqa)")
    t.add_argument("--label-key", default="mr_label", help="the column to learn (mr_label, utility, quality, ...)")
    t.add_argument("--out", required=True, help="folder for prefilter_config.json + forest.onnx")
    t.add_argument("--points", type=int, choices=[5, 106], default=5, help="106: add a 106-point landmark model")
    t.add_argument("--trees", type=int, default=100)
    t.add_argument("--max-depth", type=int, default=12)
    t.add_argument("--seed", type=int, default=0)
    _face_args(t)
    t.set_defaults(func=cmd_prefilter_train)
    s = psub.add_parser("score", help="pre-filter score of the main face of each image (JSON Lines)")
    s.add_argument("inputs", nargs="+", help="image files or folders")
    s.add_argument("--model", required=True, help="pre-filter folder")
    s.add_argument("--threshold", type=float, help="adds 'passed' to each row")
    s.add_argument("--face-root", help="folder holding models/<pack> (default: the pre-filter's)")
    s.add_argument("--out", help="JSON Lines output (default: stdout)")
    s.set_defaults(func=cmd_prefilter_score)


def _weights(value: str | None) -> Any:
    from ..fiqa.mrlabels import PARTS, MRWeights

    if value is None:
        return None
    if Path(value).expanduser().is_file():
        return MRWeights.load(value)
    try:
        pairs = dict(kv.split("=", 1) for kv in value.split(","))
        w = MRWeights(weights={k.strip(): float(v) for k, v in pairs.items()}, chosen_by="given (--weights)")
        w.vector()
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--weights {value!r}: give a mr_weights.json file or e.g. embedding=0.5,vl=0.2,rank=0.3 "
                         f"(parts: {', '.join(PARTS)})") from exc
    return w


def cmd_label(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..faces.encoder import FaceEncoder
    from ..fiqa.mrlabels import measure_parts, read_label_input, label_set, write_labels
    from ..errors import ConfigError
    from ..fiqa.vl import parse_vl, vl_source

    try:
        parse_vl(args.vl)
    except ConfigError as exc:
        raise UsageError(f"--vl: {exc}") from exc
    if not Path(args.data).expanduser().exists():
        raise UsageError(f"{args.data}: no such file or folder; give identity folders or a JSON Lines manifest")
    check_out_file("--out", args.out, "labels.jsonl")
    check_out_file("--feval-manifest", args.feval_manifest, "manifest.jsonl")
    check_folder("--face-root", args.face_root, "models/<pack>")
    check_device(args.device)
    weights = _weights(args.weights)
    factors = [f.strip() for f in args.rank_factors.split(",") if f.strip()]
    items = read_label_input(args.data)
    encoder = FaceEncoder(args.face_pack, root=args.face_root, device=args.device or "cpu",
                          det_size=(args.det_size, args.det_size))
    vl = vl_source(args.vl, device=args.device, face_root=args.face_root)
    with tqdm(total=len(items), desc="labelling", unit="img", disable=None) as bar:
        raw, errors = measure_parts(items, encoder, vl, factors, bar.update)
    labels = label_set(items, raw, errors, weights, fit=args.fit_weights)
    labels.weights.rank_factors, labels.weights.vl_source = factors, args.vl
    paths = write_labels(labels, args.out, args.feval_manifest)
    srcc = labels.weights.srcc_vs_severity
    if srcc:
        print("SRCC with -severity: " + ", ".join(f"{k} {v:.3f}" for k, v in srcc.items()), file=sys.stderr)
    failed = sum(e is not None for e in errors)
    print(f"labelled {len(items) - failed} of {len(items)} images ({labels.weights.chosen_by}: "
          f"{labels.weights.weights}); wrote {', '.join(map(str, paths))}", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def cmd_synth(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..errors import ConfigError
    from ..fiqa.synth import SynthConfig, load_pipeline, synthesize

    check_out_folder("--out", args.out)
    check_device(args.device)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SynthConfig) if f.name != "pipeline"}
    values["factors"] = [f.strip() for f in values["factors"].split(",") if f.strip()]
    try:
        cfg = SynthConfig(**values, pipeline=args.pipeline)
    except ConfigError as exc:
        raise UsageError(f"feval fiqa synth: {exc}") from exc
    pipe = load_pipeline(args.pipeline, args.device, args.dtype)
    with tqdm(total=cfg.identities * cfg.per_identity, desc="synthesizing", unit="img", disable=None) as bar:
        manifest = synthesize(pipe, args.out, cfg, bar.update)
    print(f"wrote {manifest}; label it with `feval fiqa label {args.out} --fit-weights --out ...`", file=sys.stderr)
    return EXIT_OK


def cmd_prefilter_train(args: argparse.Namespace) -> int:
    from ..fiqa.prefilter import train_prefilter
    from ..model.config import FaceEncoderConfig

    check_file("--labels", args.labels)
    check_out_folder("--out", args.out)
    check_folder("--face-root", args.face_root, "models/<pack>")
    check_min("--trees", args.trees)
    root = str(Path(args.face_root).expanduser().absolute()) if args.face_root else None
    pf = train_prefilter(args.labels, args.out, label_key=args.label_key, points=args.points,
                         face=FaceEncoderConfig(pack=args.face_pack, root=root, det_size=args.det_size),
                         n_estimators=args.trees, max_depth=args.max_depth, seed=args.seed)
    print(f"wrote {args.out}: forest of {args.trees} trees on {pf.config.train_faces} faces, held-out SRCC with "
          f"{args.label_key} {pf.config.heldout_srcc:.3f}", file=sys.stderr)
    return EXIT_OK


def cmd_prefilter_score(args: argparse.Namespace) -> int:
    from ..fiqa.prefilter import LandmarkPrefilter

    check_folder("--model", args.model, "prefilter_config.json and forest.onnx")
    check_out_file("--out", args.out)
    pf = LandmarkPrefilter.from_pretrained(args.model, face_root=args.face_root)
    rows = pf.score(args.inputs).to_records(args.threshold)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return EXIT_SOME_FAILED if any(r["error"] for r in rows) else EXIT_OK
