"""ComfyUI entry point of the feval node pack.

ComfyUI imports this folder as a package; outside ComfyUI (or without a GPU or a model) importing
it must work and stay cheap, so the node modules load only when ComfyUI asks for them.
"""

from __future__ import annotations

from typing import Any


async def comfy_entrypoint() -> Any:
    """ComfyUI V3 entry point: returns the extension listing feval's nodes."""
    from .nodes import FEvalExtension

    return FEvalExtension()


WEB_DIRECTORY = None
__all__ = ["comfy_entrypoint"]
