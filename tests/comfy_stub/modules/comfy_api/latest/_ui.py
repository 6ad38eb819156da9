"""Stub of ComfyUI's ``comfy_api.latest._ui``: preview outputs record what they were given."""

from __future__ import annotations

from typing import Any

from ._io import _UIOutput

SAVED: list[Any] = []
"""Every image batch a ``PreviewImage`` was built from (tests inspect it)."""


class PreviewImage(_UIOutput):
    """Like ComfyUI's: saves each image of the batch to the temp folder (here: records it).

    ComfyUI reads ``image[0].shape`` first, so an empty batch raises IndexError, as it does there.
    """

    def __init__(self, image: Any, animated: bool = False, cls: Any = None, **kwargs: Any) -> None:
        height, width = image[0].shape[0], image[0].shape[1]
        SAVED.append(image)
        self.values = [{"filename": f"ComfyUI_temp_{i:05}_.png", "subfolder": "", "type": "temp",
                        "width": width, "height": height} for i in range(len(image))]
        self.animated = animated

    def as_dict(self) -> dict:
        return {"images": self.values, "animated": (self.animated,)}


class PreviewText(_UIOutput):
    def __init__(self, value: str, **kwargs: Any) -> None:
        self.value = value

    def as_dict(self) -> dict:
        return {"text": (self.value,)}
