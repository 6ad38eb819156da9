"""feval_core: the F-Eval engine (face quality, authenticity, identity and correspondence scores on 0-100).

Heavy modules (torch, transformers) load lazily so ``import feval_core`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _moved
from .dimensions import DIMENSIONS
from .errors import (
    CheckpointError,
    ConfigError,
    FaceModelError,
    FEvalError,
    ImageInputError,
    InputMismatchError,
    ManifestError,
)

__version__ = "0.1.0"

_moved.install()  # old flat module paths (feval_core.images, ...) keep working, with a warning

if TYPE_CHECKING:  # pragma: no cover
    from .model.config import FEvalConfig
    from .scoring.result import ScoreResult
    from .scoring.scorer import FEvalScorer

_LAZY = {"FEvalScorer": "scoring.scorer", "ScoreResult": "scoring.result", "FEvalConfig": "model.config"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'feval_core' has no attribute {name!r}")


__all__ = [
    "DIMENSIONS",
    "FEvalScorer",
    "ScoreResult",
    "FEvalConfig",
    "FEvalError",
    "ImageInputError",
    "InputMismatchError",
    "ConfigError",
    "CheckpointError",
    "FaceModelError",
    "ManifestError",
    "__version__",
]
