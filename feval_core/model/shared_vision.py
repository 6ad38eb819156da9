"""The fast scoring path: each image through the processor and the vision tower once, rows in length buckets.

The experts sit on the LLM only (unless a checkpoint puts them on the vision tower), so the tower's output
is the same for all four dimensions of an image: :meth:`SharedVision.score_rows` runs the tower once per
distinct image and places its features into all its rows (``mm_encoder_outputs``), and sends the rows
through the LLM in groups of similar length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..dimensions import DIM_INDEX
from .batching import PreparedImage, length_buckets, pad_left
from .rows import FEvalOutput, Row

_TEXT_KEYS = frozenset({"input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids"})


class SharedVision:
    """Mixin of :class:`~feval_core.model.lmm.FEvalModel`: the shared-vision, length-bucketed scoring path."""

    @property
    def can_share_vision(self) -> bool:
        """True when one vision-tower run per image can serve all its rows: the processor names its image
        token and no expert (LoRA) sits outside the language model, so the tower's output is the same for
        every dimension."""
        if getattr(self.processor, "image_token", None) is None:
            return False
        if not hasattr(self.base_model, "get_image_features"):
            return False
        if self._vision_has_lora is None:
            self._vision_has_lora = any(
                name.endswith("lora_A") and "language_model" not in name and "lm_head" not in name
                for name, _ in self.backbone.named_modules())
        return not self._vision_has_lora

    @property
    def image_token_id(self) -> int:
        return int(self.processor.tokenizer.convert_tokens_to_ids(self.processor.image_token))

    def prepare_image(self, image: Any, processor: Any = None) -> PreparedImage:
        """Run the processor on one image (thread-safe with a ``processor`` copy per thread): the ids that
        stand for it in a row and its pixel tensors. Rows that show the same image share the result."""
        proc = processor if processor is not None else self.processor
        out = proc(images=[image], text=[proc.image_token], return_tensors="pt", add_special_tokens=False)
        ids = out["input_ids"][0].tolist()
        pixels = {k: v for k, v in out.items() if k not in _TEXT_KEYS and isinstance(v, torch.Tensor)}
        image_id = proc.tokenizer.convert_tokens_to_ids(proc.image_token)  # this thread's own tokenizer
        return PreparedImage(ids, pixels, sum(1 for t in ids if t == image_id))

    def score_rows(self, rows: Sequence[Row], prepared: dict[int, PreparedImage] | None = None, *,
                   share_vision: bool = True, bucket: bool = True, max_padding: float = 0.15,
                   max_batch_tokens: int | None = None) -> FEvalOutput:
        """Score many (image x dimension) rows, in order; equal to ``self(self.collate(rows))`` up to float noise.

        With ``share_vision`` (when :attr:`can_share_vision`), each distinct image (by object identity) runs
        through the processor and the vision tower once, and its features are placed into all its rows;
        ``prepared`` maps ``id(image)`` to a :class:`PreparedImage` made ahead (e.g. in worker threads) and
        receives the ones made here. With ``bucket``, rows go through the LLM in groups of similar length
        (see :func:`~feval_core.model.batching.length_buckets`) instead of one pass padded to the longest row.
        """
        if not rows:
            raise ValueError("score_rows needs at least one row")
        if not (share_vision and self.can_share_vision):
            return self(self.collate(rows).to(self.device))
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        prepared = {} if prepared is None else prepared
        texts, row_images, row_faces = self._row_texts(rows)
        slot: dict[int, int] = {}  # id(image) -> index into ``unique``
        unique: list[PreparedImage] = []
        for imgs in row_images:
            for im in imgs:
                if id(im) not in slot:
                    if id(im) not in prepared:
                        prepared[id(im)] = self.prepare_image(im)
                    slot[id(im)] = len(unique)
                    unique.append(prepared[id(im)])
        seqs = self._expand_ids(self.processor.tokenizer(texts)["input_ids"], row_images, slot, unique)
        features, as_tensor = self._image_features(unique)
        groups = (length_buckets([len(s) for s in seqs], max_padding, max_batch_tokens) if bucket
                  else [list(range(len(rows)))])
        n = len(rows)
        level_logits: torch.Tensor | None = None
        hidden: torch.Tensor | None = None
        pad_id = self.processor.tokenizer.pad_token_id
        for group in groups:
            if self.rows_by_expert:  # each expert's rows become one contiguous range
                group = sorted(group, key=lambda i: DIM_INDEX[rows[i].dim])
            ids, mask = pad_left([seqs[i] for i in group], pad_id)
            kwargs: dict[str, Any] = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
            if "mm_token_type_ids" in self._text_keys:
                kwargs["mm_token_type_ids"] = self._mm_token_type_ids(ids).to(self.device)
            order = [slot[id(im)] for i in group for im in row_images[i]]
            feats = [features[k] for k in order]
            pooled: Any = torch.cat(feats) if as_tensor else tuple(feats)
            kwargs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=pooled)}
            for key in self._per_image_position_keys(unique[0]):
                kwargs[key] = torch.cat([unique[k].pixels[key] for k in order]).to(self.device)
            faces = self._face_tensor([f for i in group for f in row_faces[i]])
            logits_g, hidden_g = self._run(kwargs, faces.to(self.device) if faces is not None else None,
                                           [rows[i].dim for i in group], by_range=self.rows_by_expert)
            if level_logits is None:
                level_logits = logits_g.new_empty((n, logits_g.shape[1]))
                hidden = hidden_g.new_empty((n, hidden_g.shape[1]))
            index = torch.as_tensor(group, device=logits_g.device)
            level_logits[index] = logits_g
            hidden[index] = hidden_g
            if self.stats is not None:
                lengths = [len(seqs[i]) for i in group]
                st = self.stats
                st.passes += 1
                st.rows += len(group)
                st.tokens += sum(lengths)
                st.padded_tokens += ids.numel()
                st.tokens_sq += sum(x * x for x in lengths)
        assert level_logits is not None and hidden is not None
        dim_idx = torch.tensor([DIM_INDEX[r.dim] for r in rows], dtype=torch.long, device=hidden.device)
        return self._readout(level_logits, hidden, dim_idx)

    def _expand_ids(self, ids: list[list[int]], row_images: list[list[Any]], slot: dict[int, int],
                    unique: list[PreparedImage]) -> list[list[int]]:
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
                    seq.extend(unique[slot[id(imgs[k])]].ids)
                    k += 1
                else:
                    seq.append(t)
            if k != len(imgs):
                raise RuntimeError(f"a row's text has {k} image tokens for {len(imgs)} image(s); check the chat "
                                   "template of the processor")
            seqs.append(seq)
        return seqs

    def _image_features(self, unique: list[PreparedImage]) -> tuple[list[torch.Tensor], bool]:
        """Vision features ``[num_tokens, hidden]`` of each prepared image (one tower run for all of them)
        and whether the backbone takes them as one tensor (InternVL) rather than a per-image tuple."""
        keys = list(unique[0].pixels)
        inputs = {k: torch.cat([p.pixels[k] for p in unique]).to(self.device) for k in keys}
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

