"""One batched SDPA call per layer for vision towers that attend within variable-length chunks.

Qwen2-VL/Qwen2.5-VL vision towers attend within windows (and, in a few layers, within whole images) given
by ``cu_seqlens``. With flash-attention they make one varlen call; with SDPA, transformers loops over the
chunks in Python, one small kernel per window: ~86 windows per 1024-px image, in 28 of 32 layers, so a
batch of 16 such images issues ~40,000 attention calls and the GPU waits on the CPU. Here the chunks are
gathered into one padded batch ``[chunks, heads, longest, head_dim]`` and attended in a single SDPA call
with a key-padding mask; the result equals the per-chunk loop (the masked keys get zero weight).
"""

from __future__ import annotations

import logging
import sys
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

# attention classes whose forward this module knows how to batch (same structure in both families)
PATCHABLE = frozenset({"Qwen2_5_VLVisionAttention", "VisionAttention"})


def varlen_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                scale: float) -> torch.Tensor:
    """Bidirectional attention within each chunk ``cu_seqlens[i]:cu_seqlens[i+1]`` of ``[N, heads, dim]``
    tensors, as one SDPA call; returns ``[N, heads, dim]``."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    longest = int(lengths.max())
    steps = torch.arange(longest, device=q.device)
    valid = steps[None, :] < lengths[:, None]  # [chunks, longest]
    index = torch.where(valid, cu_seqlens[:-1, None] + steps[None, :], 0)

    def gather(t: torch.Tensor) -> torch.Tensor:
        return t[index].transpose(1, 2)  # [chunks, heads, longest, dim]

    mask = None if bool(valid.all()) else valid[:, None, None, :]
    out = F.scaled_dot_product_attention(gather(q), gather(k), gather(v), attn_mask=mask, scale=scale)
    return out.transpose(1, 2)[valid]  # back to [N, heads, dim], chunk by chunk in order


def _batched_forward(self: nn.Module, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
                     position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                     max_seqlen: int | None = None, **kwargs: Any) -> torch.Tensor:
    """Replacement forward of a Qwen2(.5)-VL vision attention module (see the module docstring)."""
    rotary = sys.modules[type(self).__module__].apply_rotary_pos_emb_vision
    seq_length = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = rotary(q, k, cos, sin)
    out = varlen_sdpa(q, k, v, cu_seqlens.to(q.device).long(), self.scaling)
    return self.proj(out.reshape(seq_length, -1).contiguous())


def batch_window_attention(model: nn.Module) -> int:
    """Give every SDPA vision attention module of ``model`` that loops over chunks the batched forward.

    Modules that use flash-attention (already one varlen call) or eager attention are left alone.
    Returns how many modules were changed.
    """
    changed = 0
    for module in model.modules():
        if type(module).__name__ not in PATCHABLE or getattr(module, "_feval_batched", False):
            continue
        impl = getattr(getattr(module, "config", None), "_attn_implementation", None)
        if impl != "sdpa" or not all(hasattr(module, a) for a in ("qkv", "proj", "num_heads", "scaling")):
            continue
        if not hasattr(sys.modules[type(module).__module__], "apply_rotary_pos_emb_vision"):
            continue
        module.forward = types.MethodType(_batched_forward, module)
        module._feval_batched = True
        changed += 1
    if changed:
        logger.debug("vision attention: %d modules attend all their windows in one SDPA call", changed)
    return changed


def restore_window_attention(model: nn.Module) -> int:
    """Undo :func:`batch_window_attention` (benchmarks compare both). Returns how many modules changed."""
    changed = 0
    for module in model.modules():
        if getattr(module, "_feval_batched", False):
            del module.forward
            module._feval_batched = False
            changed += 1
    return changed
