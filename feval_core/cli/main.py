"""The ``feval`` command's dispatcher: one sub-command per module, registered in :data:`_COMMANDS`.

Each command module has ``add_parser(sub, name, help_text)``; its ``cmd_*`` function checks the arguments
(:mod:`.checks`) before loading anything heavy. Known errors (:class:`~feval_core.errors.FEvalError`, usage
errors included) become one line on stderr and exit status 2; ``-v`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import warnings
from collections.abc import Callable, Sequence

logger = logging.getLogger("feval")

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2

# name -> (module, help), in the order `feval --help` lists them.
_COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("feval_core.cli.score", "score images (files or folders) and write JSON Lines"),
    "make-tiny": ("feval_core.cli.make_tiny",
                  "write a tiny random-weight checkpoint (offline; scores are meaningless)"),
    "train": ("feval_core.cli.train", "fine-tune projector, LoRA experts, router and heads on opinion scores"),
    "eval": ("feval_core.cli.eval", "SRCC / KRCC / PLCC per task and dimension, like the paper's tables"),
    "bench": ("feval_core.cli.bench", "F-Bench: leaderboard of generators per dimension, with a radar chart"),
    "import-faceq": ("feval_core.cli.data", "turn a FaceQ download (images/ + MOSs/) into a manifest"),
    "split": ("feval_core.cli.data", "split a manifest into train/val/test, reproducibly, optionally by model"),
    "video": ("feval_core.cli.video", "face video quality (FVQ-Rater): train, eval, import FVQ-20K"),
    "fiqa": ("feval_core.cli.fiqa", "face image quality for recognition (ViT-FIQA): train, EDC eval, import "
                                    "weights, MR labels, synth sets, landmark pre-filter"),
    "serve": ("feval_core.cli.serve", "score over HTTP for remote rewards (LitServe: one replica per GPU, "
                                      "dynamic batching)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feval", description="F-Eval: score AI-generated faces on quality, "
                                     "authenticity, identity and correspondence (0-100, higher is better).")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in _COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.add_parser(sub, name, help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notes are not for users
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("feval", "feval_core", "reward"):
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except Exception as exc:  # a clean message for known user errors; tracebacks with -v
        from ..errors import FEvalError

        if isinstance(exc, FEvalError) and not args.verbose:
            logger.error("%s", exc)
            return EXIT_USAGE
        raise
