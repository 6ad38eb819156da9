"""Stub of ComfyUI's ``comfy_execution`` package."""
