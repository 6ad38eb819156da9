"""One (image, dimension) question as the model sees it: the row, its chat text, its face vectors, a batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..dimensions import ANSWER_PREFIX, EVAL_PROMPTS
from .backbone import FACE_TOKEN


@dataclass
class Row:
    """One (image, dimension) question put to the model."""

    image: Any  # PIL.Image.Image, RGB
    dim: str
    prompt: str | None = None
    ref: Any = None  # PIL.Image.Image of the reference face (identity)
    face: np.ndarray | None = None  # ArcFace embedding of the image's main face; None = no face
    ref_face: np.ndarray | None = None
    question: str | None = None  # the question in the user's words; None: the evaluation prompt of ``dim``
    lq: Any = None  # PIL.Image.Image: the low-quality input of a restoration (shown to the quality row)


@dataclass
class FEvalBatch:
    """Collated rows, ready for :meth:`FEvalModel.forward`."""

    inputs: dict[str, torch.Tensor]
    dim_idx: torch.Tensor
    dims: list[str]
    faces: torch.Tensor | None = None  # [num_faces, face_dim] in text order

    def to(self, device: torch.device | str) -> FEvalBatch:
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.inputs.items()}
        faces = self.faces.to(device) if self.faces is not None else None
        return FEvalBatch(moved, self.dim_idx.to(device), self.dims, faces)


def build_row_text(processor: Any, row: Row, num_face_tokens: int) -> tuple[str, list[Any], list[np.ndarray | None]]:
    """The chat text of one row, its images in order, and its faces in token order."""
    faces: list[np.ndarray | None] = []
    images: list[Any] = []
    content: list[dict[str, str]] = []

    def face_part(vec: np.ndarray | None) -> dict[str, str]:
        faces.append(vec)
        return {"type": "text", "text": " Face: " + FACE_TOKEN * num_face_tokens}

    if row.dim == "identity":
        content.append({"type": "text", "text": "Reference face: "})
        content.append({"type": "image"})
        images.append(row.ref)
        if num_face_tokens:
            content.append(face_part(row.ref_face))
        content.append({"type": "text", "text": "\nImage to rate: "})
    elif row.dim == "quality" and row.lq is not None:  # a restoration: its low-quality input first
        content.append({"type": "text", "text": "Low-quality input: "})
        content.append({"type": "image"})
        images.append(row.lq)
        content.append({"type": "text", "text": "\nRestored image to rate: "})
    content.append({"type": "image"})
    images.append(row.image)
    if num_face_tokens:
        content.append(face_part(row.face))
    content.append({"type": "text", "text": "\n" + row_question(row)})
    messages = [{"role": "user", "content": content}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text + ANSWER_PREFIX[row.dim], images, faces


def row_question(row: Row) -> str:
    """The question of a row: its own words, or its dimension's evaluation prompt (the generation prompt filled in;
    a correspondence question in the user's words gets the generation prompt after it)."""
    prompt = (row.prompt or "").strip()
    if row.question is None:
        return EVAL_PROMPTS[row.dim].format(prompt=prompt)
    if row.dim == "correspondence" and prompt and prompt not in row.question:
        return f'{row.question} The prompt: "{prompt}"'
    return row.question


def face_tensor(faces: Sequence[np.ndarray | None], face_dim: int) -> torch.Tensor:
    """``[len(faces), face_dim]`` float32 face vectors in token order; a missing face is all zeros (the facial
    projector's biases then act as a learned "no face" token)."""
    return torch.from_numpy(np.stack([
        np.asarray(f, dtype=np.float32).reshape(face_dim) if f is not None else np.zeros(face_dim, np.float32)
        for f in faces])) if faces else torch.zeros((0, face_dim), dtype=torch.float32)


@dataclass
class FEvalOutput:
    level_logits: torch.Tensor  # [N, 5] logits of the rating words (best first), float32
    level_score: torch.Tensor  # [N] 0..100
    reg_score: torch.Tensor | None  # [N] 0..100 (unclamped), None without a head
    hidden: torch.Tensor = field(repr=False)  # [N, H] last hidden state at the answer position, float32
