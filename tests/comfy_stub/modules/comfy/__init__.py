"""Stub of ComfyUI's ``comfy`` package (model management, utils, model patcher)."""
