"""``feval fiqa train|eval|import``: ViT-FIQA face image quality for recognition (``utility``, EDC evaluation);
``label``, ``synth`` and ``prefilter`` live in :mod:`.fiqa_mr`.

::

    feval fiqa import vit_s_wf42m.pt --out models/vit-s            # arcface_torch state dict -> safetensors, once
    feval fiqa train --data casia/ --init models/vit-s --out runs/vit-fiqa --freeze-recognizer
    accelerate launch --num_processes 4 -m feval_core.cli fiqa train --data ... --out ...
    feval fiqa eval --data test_ids/ --model runs/vit-fiqa --out fiqa_eval/   # EDC / pAUC table and plot
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any

from .checks import UsageError, check_device, check_file, check_folder, check_min, check_out_folder
from .main import EXIT_OK

_CHOICES = {"preset": "PRESETS", "precision": "PRECISIONS"}


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text)
    fsub = p.add_subparsers(dest="fiqa_command", required=True)
    _add_train(fsub)
    _add_eval(fsub)
    _add_import(fsub)
    from .fiqa_mr import add_mr_parsers

    add_mr_parsers(fsub)
    return p


def _arg_type(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def _add_train(fsub: Any) -> None:
    from ..fiqa import train_config as mod

    p = fsub.add_parser("train", help="train ViT-FIQA on identity folders (margin softmax + CR-FIQA labels)",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(mod.FIQATrainConfig)
    for f in dataclasses.fields(mod.FIQATrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help")
        if f.default is dataclasses.MISSING:
            p.add_argument(flag, required=True, help=help_)
        elif hints[f.name] is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
        elif f.name == "margin":
            p.add_argument(flag, choices=["arcface", "cosface"], default=f.default, help=help_)
        elif f.name in _CHOICES:
            p.add_argument(flag, choices=getattr(mod, _CHOICES[f.name]), default=f.default, help=help_)
        else:
            p.add_argument(flag, type=_arg_type(hints[f.name]), default=f.default, help=help_)
    p.set_defaults(func=cmd_train)


def _add_eval(fsub: Any) -> None:
    p = fsub.add_parser("eval", help="EDC and pAUC (20%%, 30%% discard) of quality scores, side by side")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="identity folders: DATA/<identity>/<image>")
    src.add_argument("--pairs", help="pairs list: 'IMAGE_A IMAGE_B LABEL' per line (1 = same person)")
    p.add_argument("--model", help="ViT-FIQA folder: adds its utility column")
    p.add_argument("--feval", help="F-Eval checkpoint or VLM: adds F-Eval's quality column (slow: runs the LMM)")
    p.add_argument("--quality", action="append", default=[], metavar="JSONL",
                   help="JSON Lines {\"image\": ..., \"<method>\": number} with other FIQA scores (repeatable)")
    p.add_argument("--fmr", type=float, default=1e-3, help="false-match rate that fixes the threshold")
    p.add_argument("--face-pack", default="buffalo_l", help="insightface pack whose recognizer compares faces")
    p.add_argument("--face-root", help="folder holding models/<pack>")
    p.add_argument("--det-size", type=int, default=640)
    p.add_argument("--max-nonmated", type=int, default=2_000_000, help="sample at most this many non-mated pairs")
    p.add_argument("--seed", type=int, default=0, help="seed of the random-discard column and the pair sample")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--out", default="fiqa_eval", help="folder for fiqa_eval.{csv,md,json} and edc.png")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=cmd_eval)


def _add_import(fsub: Any) -> None:
    p = fsub.add_parser("import", help="convert an arcface_torch ViT state dict (.pt/.pth) to a safetensors "
                        "ViT-FIQA folder (loaded with weights_only=True; anything else is refused)")
    p.add_argument("state_dict", help="the recognizer's .pt/.pth file")
    p.add_argument("--out", required=True, help="folder to write (fiqa_config.json + model.safetensors)")
    p.add_argument("--num-heads", type=int, default=8, help="attention heads (8 for every arcface_torch ViT)")
    p.add_argument("--face-pack", default="buffalo_l", help="insightface pack that aligns faces for it")
    p.add_argument("--face-root", help="folder holding models/<pack> (stored in the config)")
    p.set_defaults(func=cmd_import)


def cmd_train(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..fiqa.train_config import FIQATrainConfig

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(FIQATrainConfig)}
    try:
        cfg = FIQATrainConfig(**values)
    except ConfigError as exc:
        raise UsageError(f"feval fiqa train: {exc}") from exc
    check_folder("--data", cfg.data, "one sub-folder of images per identity")
    check_folder("--init", cfg.init, "fiqa_config.json and model.safetensors")
    check_file("--labels", cfg.labels)
    check_folder("--face-root", cfg.face_root, "models/<pack>")
    check_out_folder("--out", cfg.out)
    from ..fiqa.train import train_fiqa

    result = train_fiqa(cfg)
    from accelerate import PartialState

    if PartialState().is_main_process:
        if result.finished:
            last = result.history[-1] if result.history else {}
            print(f"trained ViT-FIQA: {result.out} ({result.steps} steps, {result.seconds:.0f} s; identity accuracy "
                  f"{last.get('acc', float('nan')):.2f}, {result.skipped} images left out)", file=sys.stderr)
        else:
            print(f"stopped after {result.steps} steps; continue with the same command and --resume", file=sys.stderr)
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    check_folder("--data", args.data, "one sub-folder of images per identity")
    check_file("--pairs", args.pairs)
    check_folder("--model", args.model, "fiqa_config.json and model.safetensors")
    for q in args.quality:
        check_file("--quality", q)
    check_folder("--face-root", args.face_root, "models/<pack>")
    check_min("--max-nonmated", args.max_nonmated)
    check_device(args.device)
    check_out_folder("--out", args.out)
    if not 0 < args.fmr < 1:
        raise UsageError(f"--fmr must be in (0, 1), e.g. 1e-3; got {args.fmr}")
    from ..fiqa.evaluate import evaluate_dataset

    report = evaluate_dataset(data=args.data, pairs=args.pairs, model=args.model, feval=args.feval,
                              quality=args.quality, fmr=args.fmr, face_pack=args.face_pack, face_root=args.face_root,
                              det_size=args.det_size, max_nonmated=args.max_nonmated, seed=args.seed,
                              device=args.device)
    paths = report.save(args.out, plot=not args.no_plots)
    print(report.format())
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    check_file("state_dict", args.state_dict)
    check_out_folder("--out", args.out)
    check_min("--num-heads", args.num_heads)
    from ..fiqa.importer import import_arcface_vit
    from ..model.config import FaceEncoderConfig

    root = str(Path(args.face_root).expanduser().absolute()) if args.face_root else None
    out = import_arcface_vit(args.state_dict, args.out, num_heads=args.num_heads,
                             face=FaceEncoderConfig(pack=args.face_pack, root=root))
    print(f"wrote {out} (safetensors); its quality head is untrained: train it with `feval fiqa train --init {out}`",
          file=sys.stderr)
    return EXIT_OK
