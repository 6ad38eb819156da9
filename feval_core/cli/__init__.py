"""The ``feval`` command: one module per command and one dispatcher (:mod:`.main`).

Arguments are checked before any model is loaded (:mod:`.checks`): a usage error is one line and exit 2.
Top room: may import every other room.
"""

from __future__ import annotations

from .main import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, build_parser, main

__all__ = ["EXIT_OK", "EXIT_SOME_FAILED", "EXIT_USAGE", "build_parser", "main"]
