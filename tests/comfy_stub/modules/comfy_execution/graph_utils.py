"""Stub of ``comfy_execution.graph_utils``."""


class ExecutionBlocker:
    """An output value that makes ComfyUI skip every node that consumes it (silently when message is None)."""

    def __init__(self, message):
        self.message = message
