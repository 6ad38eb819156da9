"""Exceptions raised by feval. Every message says what went wrong and what to do about it."""

from __future__ import annotations


class FEvalError(Exception):
    """Base class of every feval error."""


class ImageInputError(FEvalError, ValueError):
    """An input could not be turned into an RGB image (unreadable, truncated, empty, too large, bad layout)."""


class InputMismatchError(FEvalError, ValueError):
    """Lists passed together (images, prompts, refs) do not line up."""


class ConfigError(FEvalError, ValueError):
    """A saved configuration is missing, malformed or inconsistent."""


class CheckpointError(FEvalError, OSError):
    """A checkpoint folder is incomplete or holds files feval refuses to load (e.g. pickles)."""


class FaceModelError(FEvalError, RuntimeError):
    """The insightface model pack could not be found or loaded."""


class ManifestError(FEvalError, ValueError):
    """A training/evaluation manifest row is invalid; the message names the line."""
