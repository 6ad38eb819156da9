"""ComfyUI IMAGE batches (``[B, H, W, C]`` float in [0, 1]) to and from what feval_core takes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def to_uint8(images: torch.Tensor, name: str = "images") -> np.ndarray:
    """A ``[B, H, W, 3]`` uint8 array from a ComfyUI IMAGE batch (channels-last, so never ambiguous)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a ComfyUI IMAGE batch [B, H, W, C] with C = 1, 3 or 4; got {shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch; connect a node that outputs at least one image")
    x = torch.nan_to_num(images.detach().float(), nan=0.0).clamp(0.0, 1.0)
    if x.shape[-1] == 1:
        x = x.expand(-1, -1, -1, 3)
    elif x.shape[-1] == 4:  # composite alpha on white, as feval_core does for files
        x = x[..., :3] * x[..., 3:] + (1.0 - x[..., 3:])
    return (x * 255.0).round().to(torch.uint8).cpu().numpy()


def take(images: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
    """The images at ``indices``, in that order (a new batch on the same device)."""
    return images.index_select(0, torch.as_tensor(list(indices), dtype=torch.long, device=images.device))
