"""The trainable parts F-Eval adds around a frozen VLM: facial projector, router and score head."""

from __future__ import annotations

import torch
from torch import nn

from ..dimensions import DIMENSIONS


class FacialProjector(nn.Module):
    """ArcFace embedding (``face_dim``) -> ``num_tokens`` vectors in the LLM's embedding space.

    A missing face is an all-zero embedding; the projector's biases then act as a learned
    "no face" token.
    """

    def __init__(self, face_dim: int, hidden_size: int, num_tokens: int) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.hidden_size = hidden_size
        self.net = nn.Sequential(
            nn.Linear(face_dim, hidden_size),
            nn.GELU(),
            nn.Linear(hidden_size, num_tokens * hidden_size),
        )

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """``[N, face_dim]`` -> ``[N * num_tokens, hidden]`` (token order: face by face)."""
        return self.net(faces).reshape(-1, self.hidden_size)


class Router(nn.Module):
    """Classifies an evaluation prompt (mean of its frozen token embeddings) into a dimension (top-1 expert)."""

    def __init__(self, hidden_size: int, num_experts: int = len(DIMENSIONS)) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.proj = nn.Linear(hidden_size, num_experts)

    def forward(self, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """``[N, hidden]`` pooled prompt embeddings -> ``[N, num_experts]`` logits."""
        return self.proj(self.norm(prompt_embeds))


class ScoreHead(nn.Module):
    """Regression head on the last hidden state: one output per dimension, MOS / 100."""

    def __init__(self, hidden_size: int, num_dims: int = len(DIMENSIONS)) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.proj = nn.Linear(hidden_size, num_dims)
        nn.init.normal_(self.proj.weight, std=0.01)
        nn.init.constant_(self.proj.bias, 0.5)  # start in the middle of the scale

    def forward(self, hidden: torch.Tensor, dim_idx: torch.Tensor) -> torch.Tensor:
        """``[N, hidden]``, ``[N]`` dimension indices -> ``[N]`` scores on 0..100 (unclamped)."""
        out = self.proj(self.norm(hidden))
        return out.gather(1, dim_idx.view(-1, 1)).squeeze(1) * 100.0


class FEvalHeads(nn.Module):
    """Container whose state dict is ``projectors.safetensors``."""

    def __init__(self, face_dim: int, hidden_size: int, num_tokens: int) -> None:
        super().__init__()
        self.face_projector = FacialProjector(face_dim, hidden_size, num_tokens)
        self.router = Router(hidden_size)
        self.head = ScoreHead(hidden_size)
