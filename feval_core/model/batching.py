"""Batching rows for the fast scoring path: images prepared once, length buckets, left padding, pass counters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class PreparedImage:
    """One image run through the processor once, reusable by every row (dimension) that shows it."""

    ids: list[int]  # token ids that stand for the image in a sequence (replace its one placeholder token)
    pixels: dict[str, torch.Tensor]  # image-side processor outputs of this image alone (pixel_values, ...)
    num_tokens: int  # how many of ``ids`` receive vision features


@dataclass
class PassStats:
    """Work done by the fast path, summed over calls (benchmarks count FLOPs and padding from it)."""

    rows: int = 0
    passes: int = 0  # backbone (LLM) passes
    tokens: int = 0  # real tokens
    padded_tokens: int = 0  # tokens including left padding
    tokens_sq: int = 0  # sum of squared row lengths (attention cost)
    images: int = 0  # vision-tower runs (unique images)
    image_tokens: int = 0  # vision features produced (LLM tokens)
    vision_inputs: int = 0  # rows of pixel_values (Qwen: patches; others: tiles)
    vision_inputs_sq: int = 0  # sum over images of (vision inputs)^2 (full-attention cost)

    def reset(self) -> None:
        for name, value in vars(PassStats()).items():
            setattr(self, name, value)

    @property
    def padding_fraction(self) -> float:
        """Share of the LLM's token slots spent on padding."""
        return 1.0 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0


def length_buckets(lengths: Sequence[int], max_padding: float = 0.15, max_tokens: int | None = None) -> list[list[int]]:
    """Group row indices so that each group, padded to its longest row, wastes at most ``max_padding`` of its
    token slots (and holds at most ``max_tokens`` padded tokens, when given). Groups hold rows of similar
    length, shortest first; every index appears exactly once.
    """
    if not 0.0 <= max_padding < 1.0:
        raise ValueError(f"max_padding must be in [0, 1), got {max_padding}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i in sorted(range(len(lengths)), key=lambda k: lengths[k]):
        length = int(lengths[i])
        padded = length * (len(current) + 1)  # ascending order: this row is the longest so far
        waste = padded - (total + length)
        too_big = max_tokens is not None and padded > max_tokens
        if current and (waste > max_padding * padded or too_big):
            groups.append(current)
            current, total = [], 0
        current.append(i)
        total += length
    if current:
        groups.append(current)
    return groups


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into ``input_ids`` and ``attention_mask`` (the answer position stays last)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        if s:
            ids[r, width - len(s):] = torch.as_tensor(s, dtype=torch.long)
            mask[r, width - len(s):] = 1
    return ids, mask
