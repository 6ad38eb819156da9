"""ArcFace-aligned face crops with gradients: the warp insightface's ``norm_crop`` applies, in torch.

:func:`aligned_face_crops` warps faces to the 112x112 ArcFace template from key points found without
gradients (:class:`~feval_core.faces.encoder.FaceInfo`); the crop is differentiable with respect to the image
(bilinear ``grid_sample``), so a torch port of a recognizer can give identity gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ARCFACE_TEMPLATE", "aligned_face_crops", "similarity_transform"]

ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)
"""insightface's five-point template for 112x112 ArcFace crops (eyes, nose, mouth corners)."""




def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, shift) that maps ``src`` points onto ``dst`` best
    (least squares, Umeyama), as insightface's ``norm_crop`` estimates it."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    scale = float((sig * np.diag(sign)).sum() / s.var(0).sum())
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def aligned_face_crops(images: torch.Tensor, kps: Sequence[np.ndarray | None], size: int = 112) -> torch.Tensor:
    """ArcFace-aligned ``[B, 3, size, size]`` crops of ``[B, 3, H, W]`` images, differentiable w.r.t. the pixels.

    ``kps``: five key points per image (``FaceInfo.kps``, found without gradients) or None (a zero crop).
    The warp is the one insightface's ``norm_crop`` applies (same template, bilinear sampling, zeros outside).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got {list(images.shape)}")
    if len(kps) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {len(kps)} key-point sets; pass one (or None) per image")
    b, _, h, w = images.shape
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)
    has = torch.zeros(b, dtype=torch.bool)
    template = ARCFACE_TEMPLATE * (size / 112.0)
    for i, k in enumerate(kps):
        if k is None:
            theta[i, 0, 0] = theta[i, 1, 1] = 1.0
            continue
        has[i] = True
        fwd = np.vstack([similarity_transform(np.asarray(k).reshape(5, 2), template), [0, 0, 1]])
        inv = np.linalg.inv(fwd)  # crop pixel -> image pixel
        # normalised coordinates (align_corners=False): u = (2x + 1) / W - 1  <=>  x = ((u + 1) W - 1) / 2
        to_pix = np.array([[size / 2, 0, (size - 1) / 2], [0, size / 2, (size - 1) / 2], [0, 0, 1]])
        to_norm = np.array([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]])
        theta[i] = torch.from_numpy((to_norm @ inv @ to_pix)[:2])
    grid = F.affine_grid(theta.to(images.device, images.dtype), [b, 3, size, size], align_corners=False)
    crops = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return crops * has.to(images.device).view(b, 1, 1, 1).to(crops.dtype)
