"""Stub of ComfyUI's ``comfy_api`` package for tests that run node packs without ComfyUI."""
