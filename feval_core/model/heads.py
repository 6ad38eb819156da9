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
    """Picks the expert (top-1 dimension) from a question in any wording.

    Two reads of the question's tokens are summed: a learned score per token and dimension (a bag of tokens:
    keywords such as "sharp", "natural", "reference", "prompt" carry over to new sentences) and a linear read of
    the mean of their frozen LLM embeddings (it carries synonyms in a real LLM; trained with strong weight decay
    so that it does not memorise the training sentences).
    """

    EMBEDDING_DECAY = 1.0
    """AdamW weight decay of the embedding read (the token scores have none)."""

    def __init__(self, hidden_size: int, num_experts: int = len(DIMENSIONS), vocab_size: int = 0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.proj = nn.Linear(hidden_size, num_experts)
        self.tokens = nn.Embedding(max(1, vocab_size), num_experts)
        nn.init.zeros_(self.tokens.weight)  # an unseen token says nothing

    def forward(self, prompt_embeds: torch.Tensor, token_ids: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, hidden]`` mean frozen embeddings (and ``[N, T]`` token ids with their mask) -> ``[N, E]`` logits."""
        logits = self.proj(self.norm(prompt_embeds))
        if token_ids is not None:
            m = mask.float() if mask is not None else torch.ones_like(token_ids, dtype=torch.float32)
            ids = token_ids.clamp(max=self.tokens.num_embeddings - 1)
            logits = logits + (self.tokens(ids) * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp(min=1).sqrt()
        return logits


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

    def __init__(self, face_dim: int, hidden_size: int, num_tokens: int, vocab_size: int = 0) -> None:
        super().__init__()
        self.face_projector = FacialProjector(face_dim, hidden_size, num_tokens)
        self.router = Router(hidden_size, vocab_size=vocab_size)
        self.head = ScoreHead(hidden_size)
