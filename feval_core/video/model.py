"""FVQ-Rater on the F-Eval engine: the image LMM (backbone, LoRA expert, facial projector, heads, readouts) plus
a temporal and a portrait projector. Each feature kind enters the LLM as tokens of its own:

* spatial — the key frames, as images, through the backbone's own vision tower (Q-Align's video recipe);
* temporal — the temporal encoder's features of the clip, flattened over time -> ``temporal_tokens`` tokens;
* portrait — the person features of each key frame -> one token per key frame;
* face — each key frame's ArcFace embedding through the image model's facial projector -> K tokens per frame.

The projected vectors replace placeholder tokens in the text (:meth:`FEvalModel.placeholder_tokens`). The video
quality expert is the LoRA expert ``quality`` and its head output; readouts are the image model's (rating words,
regression head).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..dimensions import DIM_INDEX
from ..errors import ConfigError
from ..model.backbone import FACE_TOKEN
from ..model.lmm import FEvalModel
from ..model.rows import FEvalOutput, face_tensor
from ..model.vision import vision_expert_of
from .config import VideoConfig

VIDEO_DIM = "quality"
"""The image dimension whose expert and head output a video checkpoint trains as its video-quality expert."""
VIDEO_QUESTION = "Please rate the quality of this face video, looking at both its frames and its motion."
VIDEO_ANSWER_PREFIX = "The quality of the video is"


@dataclass
class VideoFeatures:
    """One clip as the model sees it: key frames (PIL, RGB) and the frozen encoders' features."""

    name: str
    key_frames: list[Any]
    key_times: list[float]
    temporal: torch.Tensor | None = None  # [slots, temporal hidden]
    portrait: torch.Tensor | None = None  # [num_key_frames, portrait dim]
    faces: list[np.ndarray | None] = field(default_factory=list)  # per key frame, unit ArcFace embedding
    face_scores: list[float] = field(default_factory=list)  # detector score per key frame (0: none)


class VideoProjectors(nn.Module):
    """The projectors the image model does not have (``video_projectors.safetensors``)."""

    def __init__(self, hidden: int, temporal_slots: int, temporal_dim: int, temporal_tokens: int,
                 portrait_dim: int) -> None:
        super().__init__()
        self.hidden, self.temporal_tokens = hidden, temporal_tokens
        self.temporal = nn.Sequential(nn.LayerNorm(temporal_slots * temporal_dim),
                                      nn.Linear(temporal_slots * temporal_dim, 4 * hidden), nn.GELU(),
                                      nn.Linear(4 * hidden, temporal_tokens * hidden))
        self.portrait = nn.Sequential(nn.LayerNorm(portrait_dim), nn.Linear(portrait_dim, hidden), nn.GELU(),
                                      nn.Linear(hidden, hidden))

    def project_temporal(self, feats: torch.Tensor) -> torch.Tensor:
        """``[B, slots, D]`` -> ``[B, temporal_tokens, hidden]``."""
        return self.temporal(feats.flatten(1)).view(feats.shape[0], self.temporal_tokens, self.hidden)


class VideoLMM(FEvalModel):
    """The F-Eval LMM scoring clips; build with :meth:`FEvalModel.build` / ``from_parts`` then
    :meth:`attach_video`."""

    def attach_video(self, vconfig: VideoConfig, temporal_slots: int, temporal_dim: int, portrait_dim: int,
                     state: dict[str, torch.Tensor] | None = None) -> VideoLMM:
        self.vconfig = vconfig
        self.video = VideoProjectors(int(self.config.hidden_size), temporal_slots, temporal_dim,
                                     vconfig.temporal_tokens, portrait_dim)
        if state is not None:
            from ..model.lmm import _load_state
            from .config import VIDEO_PROJECTORS_NAME

            _load_state(self.video, state, VIDEO_PROJECTORS_NAME)
        self.video.to(self.device, torch.float32)
        return self

    def trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        yield from super().trainable_parameters()
        for name, p in self.video.named_parameters():
            p.requires_grad_(True)
            yield f"video.{name}", p

    @contextlib.contextmanager
    def _face_tokens(self, tokens: torch.Tensor | None) -> Iterator[None]:
        """Video rows carry their projected tokens already (temporal, portrait, faces in text order)."""
        if tokens is None or tokens.shape[0] == 0:
            yield
            return
        with self.placeholder_tokens(tokens):
            yield

    def clip_text(self, feats: VideoFeatures) -> str:
        """The chat text of one clip: key frames, then one line of tokens per other feature kind, the question."""
        v = self.vconfig
        content: list[dict[str, str]] = [{"type": "text", "text": "Key frames of a face video: "}]
        content += [{"type": "image"} for _ in feats.key_frames]
        if v.uses("temporal"):
            content.append({"type": "text", "text": "\nMotion: " + FACE_TOKEN * v.temporal_tokens})
        if v.uses("portrait"):
            content.append({"type": "text", "text": "\nPortrait: " + FACE_TOKEN * len(feats.key_frames)})
        if v.uses("face"):
            k = self.num_face_tokens * len(feats.key_frames)
            content.append({"type": "text", "text": "\nFaces: " + FACE_TOKEN * k})
        content.append({"type": "text", "text": "\n" + VIDEO_QUESTION})
        text = self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                  add_generation_prompt=True, tokenize=False)
        return text + VIDEO_ANSWER_PREFIX

    def _tokens(self, clips: Sequence[VideoFeatures]) -> torch.Tensor | None:
        """Projected vectors of every placeholder token of the batch, in text order (with gradients)."""
        v, dev, parts = self.vconfig, self.device, []
        temporal = (self.video.project_temporal(torch.stack([c.temporal for c in clips]).to(dev).float())
                    if v.uses("temporal") else None)
        for i, clip in enumerate(clips):
            if temporal is not None:
                parts.append(temporal[i])
            if v.uses("portrait"):
                parts.append(self.video.portrait(clip.portrait.to(dev).float()))
            if v.uses("face"):
                faces = face_tensor(clip.faces, self.config.face_dim).to(dev)
                parts.append(self.heads.face_projector(faces))
        return torch.cat(parts).to(self.dtype) if parts else None

    def score_clips(self, clips: Sequence[VideoFeatures]) -> FEvalOutput:
        """One pass over a batch of clips (gradients flow to the trainable parts when enabled).

        When the backbone can run its vision tower on its own (:attr:`can_share_vision`), the key frames go through
        the image engine's shared-vision path: the tower runs once over the batch's frames with the video expert's
        vision LoRA (``vision_experts``) and its features are handed to the LLM pass; otherwise the processor and
        the backbone's own forward (no vision experts) are used. Both give the same scores without vision experts.
        """
        if self.can_share_vision:
            return self._score_clips_shared(clips)
        return self._score_clips_processor(clips)

    def _score_clips_processor(self, clips: Sequence[VideoFeatures]) -> FEvalOutput:
        """:meth:`score_clips` through the processor and the backbone's forward (no vision experts)."""
        if self.vision_experts != "none":
            raise ConfigError("vision experts need the shared-vision path (a backbone whose processor names its "
                              "image token); use vision_experts='none'")
        texts = [self.clip_text(c) for c in clips]
        images = [im for c in clips for im in c.key_frames]
        inputs = dict(self.processor(images=images, text=texts, return_tensors="pt", padding=True))
        inputs.pop("token_type_ids", None)
        inputs = {k: t.to(self.device) if isinstance(t, torch.Tensor) else t for k, t in inputs.items()}
        dims = [VIDEO_DIM] * len(clips)
        level_logits, hidden = self._run(inputs, self._tokens(clips), dims, by_range=True)
        dim_idx = torch.full((len(clips),), DIM_INDEX[VIDEO_DIM], dtype=torch.long, device=hidden.device)
        return self._readout(level_logits, hidden, dim_idx)

    def _score_clips_shared(self, clips: Sequence[VideoFeatures]) -> FEvalOutput:
        """:meth:`score_clips` through :class:`~feval_core.model.shared_vision.SharedVision`'s pieces."""
        expert = vision_expert_of(self.vision_experts, VIDEO_DIM)
        frames = [list(c.key_frames) for c in clips]
        prepared = {id(im): self.prepare_image(im) for imgs in frames for im in imgs}
        slots = [[(id(im), expert) for im in imgs] for imgs in frames]
        features, as_tensor = self._features_by_expert(slots, prepared)
        ids = self.processor.tokenizer([self.clip_text(c) for c in clips])["input_ids"]
        seqs = self._expand_ids(ids, frames, prepared)
        kwargs = self._llm_inputs(seqs, [k for row in slots for k in row], features, as_tensor, prepared)
        dims = [VIDEO_DIM] * len(clips)
        level_logits, hidden = self._run(kwargs, self._tokens(clips), dims, by_range=True)
        dim_idx = torch.full((len(clips),), DIM_INDEX[VIDEO_DIM], dtype=torch.long, device=hidden.device)
        return self._readout(level_logits, hidden, dim_idx)
