"""``feval make-tiny``: write a tiny random-weight checkpoint, offline (for trying the commands; scores are
meaningless)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .checks import check_min, check_out_folder
from .main import EXIT_OK


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text)
    p.add_argument("out", help="folder to write")
    p.add_argument("--family", default="qwen2_5_vl", choices=["qwen2_5_vl", "internvl", "llava"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fiqa", action="store_true", help="write a tiny random-weight ViT-FIQA model instead (for "
                   "`feval score --fiqa`; utility scores are meaningless)")
    p.add_argument("--video", action="store_true", help="write a tiny random-weight video checkpoint (with sample "
                   "clips in samples/) instead, for `feval score CLIP --model DIR`")
    p.set_defaults(func=cmd_make_tiny)
    return p


def cmd_make_tiny(args: argparse.Namespace) -> int:
    check_out_folder("out", args.out)
    check_min("--seed", args.seed, 0)
    if getattr(args, "video", False):
        from ..testing.video import TINY_VIDEO_NOTICE, make_tiny_video_checkpoint

        out = make_tiny_video_checkpoint(args.out, seed=args.seed, family=args.family)
        print(f"wrote {out}\nNOTE: {TINY_VIDEO_NOTICE}", file=sys.stderr)
        return EXIT_OK
    if args.fiqa:
        from ..testing.fiqa import TINY_FIQA_NOTICE, make_tiny_fiqa

        out = make_tiny_fiqa(args.out, seed=args.seed)
        print(f"wrote {out}\nNOTE: {TINY_FIQA_NOTICE}", file=sys.stderr)
        return EXIT_OK
    from ..testing.tiny import TINY_NOTICE, make_tiny_checkpoint

    out = make_tiny_checkpoint(args.out, family=args.family, seed=args.seed)
    print(f"wrote {out}\nNOTE: {TINY_NOTICE}", file=sys.stderr)
    return EXIT_OK
