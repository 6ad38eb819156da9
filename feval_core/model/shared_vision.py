"""The fast scoring path: each image through the processor and the vision tower once, rows in length buckets.

Without vision experts (or with one shared by every dimension) the tower's output is the same for all four
dimensions of an image: :meth:`SharedVision.score_rows` runs the tower once per distinct image and places its
features into all its rows (``mm_encoder_outputs``); with one vision expert per dimension it runs once per
image and dimension, each expert on its own images. The rows go through the LLM in groups of similar length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..dimensions import DIM_INDEX
from .batching import PreparedImage, length_buckets, pad_left
from .rows import FEvalOutput, Row
from .vision import is_vision_module, vision_expert, vision_expert_of

_TEXT_KEYS = frozenset({"input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids"})


class SharedVision:
    """Mixin of :class:`~feval_core.model.lmm.FEvalModel`: the shared-vision, length-bucketed scoring path."""

    @property
    def can_share_vision(self) -> bool:
        """True when the tower can run on its own and hand its features to the LLM pass: the processor names its
        image token and the backbone has ``get_image_features``. (Vision experts are applied one at a time.)"""
        if getattr(self.processor, "image_token", None) is None:
            return False
        return hasattr(self.base_model, "get_image_features")

    @property
    def image_token_id(self) -> int:
        return int(self.processor.tokenizer.convert_tokens_to_ids(self.processor.image_token))

    def prepare_image(self, image: Any, processor: Any = None) -> PreparedImage:
        """Run the processor on one image (thread-safe with a ``processor`` copy per thread): the ids that
        stand for it in a row and its pixel tensors. Rows that show the same image share the result."""
        return prepare_image(processor if processor is not None else self.processor, image)

    def score_rows(self, rows: Sequence[Row], prepared: dict[int, PreparedImage] | None = None, *,
                   share_vision: bool = True, bucket: bool = True, max_padding: float = 0.15,
                   max_batch_tokens: int | None = None, by_expert: bool | None = None,
                   faces: torch.Tensor | None = None) -> FEvalOutput:
        """Score many (image x dimension) rows, in order; equal to ``self(self.collate(rows))`` up to float noise.

        With ``share_vision`` (when :attr:`can_share_vision`; always with vision experts, which only this path
        applies), each distinct image (by object identity) runs
        through the processor once and through the vision tower once per vision expert its rows use (once in all
        without vision experts or with a shared one), and its features are placed into all its rows; ``prepared``
        maps ``id(image)`` to a :class:`PreparedImage` made ahead (e.g. in worker threads) and receives the ones
        made here. With ``bucket``, rows go through the LLM in groups of similar length (see
        :func:`~feval_core.model.batching.length_buckets`) instead of one pass padded to the longest row.
        ``by_expert`` (default :attr:`rows_by_expert`): each LLM expert runs on its contiguous rows instead of
        through PEFT's per-row indexing (which training with gradient checkpointing needs). ``faces``: face vectors
        in token order of the rows (e.g. with gradients from a torch face embedder) instead of the rows' own.
        Differentiable.
        """
        if not rows:
            raise ValueError("score_rows needs at least one row")
        if not self.can_share_vision or (not share_vision and self.vision_experts == "none"):
            return self(self.collate(rows).to(self.device))
        by_expert = self.rows_by_expert if by_expert is None else by_expert
        prepared = {} if prepared is None else prepared
        texts, row_images, row_faces = self._row_texts(rows)
        slots: list[list[tuple[int, str | None]]] = []  # per row: (id(image), vision expert) of each image
        for row, imgs in zip(rows, row_images):
            expert = vision_expert_of(self.vision_experts, row.dim)
            for im in imgs:
                if id(im) not in prepared:
                    prepared[id(im)] = self.prepare_image(im)
            slots.append([(id(im), expert) for im in imgs])
        features, as_tensor = self._features_by_expert(slots, prepared)
        face_rows = _split_faces(faces, row_faces) if faces is not None else None
        seqs = self._expand_ids(self.processor.tokenizer(texts)["input_ids"], row_images, prepared)
        groups = (length_buckets([len(s) for s in seqs], max_padding, max_batch_tokens) if bucket
                  else [list(range(len(rows)))])
        level_logits: torch.Tensor | None = None
        hidden: torch.Tensor | None = None
        for group in groups:
            if by_expert:  # each expert's rows become one contiguous range
                group = sorted(group, key=lambda i: DIM_INDEX[rows[i].dim])
            kwargs = self._llm_inputs([seqs[i] for i in group], [k for i in group for k in slots[i]], features,
                                      as_tensor, prepared)
            if face_rows is not None:
                group_faces = torch.cat([face_rows[i] for i in group]) if self.num_face_tokens else None
            else:
                group_faces = self._face_tensor([f for i in group for f in row_faces[i]])
            logits_g, hidden_g = self._run(kwargs, group_faces.to(self.device) if group_faces is not None else None,
                                           [rows[i].dim for i in group], by_range=by_expert)
            if level_logits is None:
                level_logits = logits_g.new_empty((len(rows), logits_g.shape[1]))
                hidden = hidden_g.new_empty((len(rows), hidden_g.shape[1]))
            index = torch.as_tensor(group, device=logits_g.device)
            level_logits = level_logits.index_put((index,), logits_g)
            hidden = hidden.index_put((index,), hidden_g)
        assert level_logits is not None and hidden is not None
        dim_idx = torch.tensor([DIM_INDEX[r.dim] for r in rows], dtype=torch.long, device=hidden.device)
        return self._readout(level_logits, hidden, dim_idx)

    def _features_by_expert(self, slots: list[list[tuple[int, str | None]]], prepared: dict[int, PreparedImage]
                            ) -> tuple[dict[tuple[int, str | None], torch.Tensor], bool]:
        """Vision features of every (image, vision expert) the rows need: one tower run per expert, on that
        expert's images (its contiguous slice)."""
        by_expert: dict[str | None, list[int]] = {}
        for key_img, expert in dict.fromkeys(k for row in slots for k in row):
            by_expert.setdefault(expert, []).append(key_img)
        features: dict[tuple[int, str | None], torch.Tensor] = {}
        as_tensor = False
        for expert, images in by_expert.items():
            feats, as_tensor = self._image_features([prepared[i] for i in images], expert)
            features.update({(i, expert): f for i, f in zip(images, feats)})
        return features, as_tensor

    def _llm_inputs(self, seqs: list[list[int]], keys: list[tuple[int, str | None]],
                    features: dict[tuple[int, str | None], torch.Tensor], as_tensor: bool,
                    prepared: dict[int, PreparedImage]) -> dict[str, Any]:
        """Backbone keyword arguments of one LLM pass: padded ids and the images' features in text order."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        ids, mask = pad_left(seqs, self.processor.tokenizer.pad_token_id)
        kwargs: dict[str, Any] = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        if "mm_token_type_ids" in self._text_keys:
            kwargs["mm_token_type_ids"] = self._mm_token_type_ids(ids).to(self.device)
        feats = [features[k] for k in keys]
        pooled: Any = torch.cat(feats) if as_tensor else tuple(feats)
        kwargs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=pooled)}
        for key in self._per_image_position_keys(prepared[keys[0][0]]):
            kwargs[key] = torch.cat([prepared[k[0]].pixels[key] for k in keys]).to(self.device)
        if self.stats is not None:
            lengths = [len(s) for s in seqs]
            st = self.stats
            st.passes += 1
            st.rows += len(seqs)
            st.tokens += sum(lengths)
            st.padded_tokens += ids.numel()
            st.tokens_sq += sum(x * x for x in lengths)
        return kwargs

    def _expand_ids(self, ids: list[list[int]], row_images: list[list[Any]],
                    prepared: dict[int, PreparedImage]) -> list[list[int]]:
        """Replace each row's image placeholder tokens by the ids of its images, in order."""
        image_id = self.image_token_id
        seqs = []
        for row_ids, imgs in zip(ids, row_images):
            seq: list[int] = []
            k = 0
            for t in row_ids:
                if t == image_id:
                    if k >= len(imgs):
                        raise RuntimeError(f"a row has more image tokens than its {len(imgs)} image(s)")
                    seq.extend(prepared[id(imgs[k])].ids)
                    k += 1
                else:
                    seq.append(t)
            if k != len(imgs):
                raise RuntimeError(f"a row's text has {k} image tokens for {len(imgs)} image(s); check the chat "
                                   "template of the processor")
            seqs.append(seq)
        return seqs

    def _image_features(self, unique: list[PreparedImage], expert: str | None = None
                        ) -> tuple[list[torch.Tensor], bool]:
        """Vision features ``[num_tokens, hidden]`` of each prepared image (one tower run for all of them, with
        vision expert ``expert``) and whether the backbone takes them as one tensor (InternVL) rather than a
        per-image tuple."""
        keys = list(unique[0].pixels)
        inputs = {k: torch.cat([p.pixels[k] for p in unique]).to(self.device) for k in keys}
        with vision_expert(self._vision_layers(), expert):
            out = self.base_model.get_image_features(**inputs, return_dict=True)
        pooled = out.pooler_output
        as_tensor = isinstance(pooled, torch.Tensor)
        parts = [pooled] if as_tensor else list(pooled)
        flat = torch.cat([t.reshape(-1, t.shape[-1]) for t in parts])
        sizes = [p.num_tokens for p in unique]
        if flat.shape[0] != sum(sizes):
            raise RuntimeError(f"the vision tower gave {flat.shape[0]} features for {sum(sizes)} image tokens")
        if self.stats is not None:
            st = self.stats
            st.images += len(unique)
            st.image_tokens += sum(sizes)
            counts = [int(p.pixels["pixel_values"].shape[0]) for p in unique if "pixel_values" in p.pixels]
            st.vision_inputs += sum(counts)
            st.vision_inputs_sq += sum(c * c for c in counts)
        return list(torch.split(flat, sizes)), as_tensor

    def _vision_layers(self) -> list[Any]:
        """The LoRA layers inside the vision tower (empty without vision experts)."""
        if self.vision_experts == "none":
            return []
        if not hasattr(self, "_vision_lora"):
            self._vision_lora = [m for name, m in self.backbone.named_modules()
                                 if hasattr(m, "lora_A") and is_vision_module(name)]
        return self._vision_lora

    @staticmethod
    def _per_image_position_keys(example: PreparedImage) -> list[str]:
        """Per-image tensors the backbone needs next to the features (Qwen's grid sizes for its 3-D rope)."""
        return [k for k in ("image_grid_thw",) if k in example.pixels]

    @property
    def _text_keys(self) -> set[str]:
        return set(getattr(self.processor, "model_input_names", ()) or ())

    def _mm_token_type_ids(self, ids: torch.Tensor) -> torch.Tensor:
        create = getattr(self.processor, "create_mm_token_type_ids", None)
        if create is not None:
            return torch.as_tensor(np.asarray(create(ids.tolist())), dtype=torch.long)
        return (ids == self.image_token_id).long()



def _split_faces(faces: torch.Tensor, row_faces: list[list[Any]]) -> list[torch.Tensor]:
    """Given face vectors in the rows' token order, the vectors of each row."""
    counts = [len(fs) for fs in row_faces]
    if faces.shape[0] != sum(counts):
        raise ValueError(f"got {faces.shape[0]} face vectors for the rows' {sum(counts)} face slots")
    return list(torch.split(faces, counts))


def prepare_image(processor: Any, image: Any) -> PreparedImage:
    """One image through ``processor``: the ids that stand for it in a row and its pixel tensors."""
    out = processor(images=[image], text=[processor.image_token], return_tensors="pt", add_special_tokens=False)
    ids = out["input_ids"][0].tolist()
    pixels = {k: v for k, v in out.items() if k not in _TEXT_KEYS and isinstance(v, torch.Tensor)}
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    return PreparedImage(ids, pixels, sum(1 for t in ids if t == image_id))
