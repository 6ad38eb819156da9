"""The F-Eval LMM: a frozen VLM backbone, face tokens from a facial projector, four LoRA experts
(one per dimension, chosen per row) and two score readouts (rating words, regression head)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .backbone import FACE_TOKEN, add_face_token, load_backbone, load_processor, rating_token_ids
from .batching import PassStats, PreparedImage, length_buckets, pad_left
from .config import FEvalConfig
from .dimensions import ANSWER_PREFIX, DIM_INDEX, DIMENSIONS, EVAL_PROMPTS, LEVEL_VALUES, LEVEL_WORDS
from .experts import contiguous_ranges, expert_ranges, lora_linears
from .modules import FEvalHeads

logger = logging.getLogger(__name__)

_TEXT_KEYS = frozenset({"input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids"})


@dataclass
class Row:
    """One (image, dimension) question put to the model."""

    image: Any  # PIL.Image.Image, RGB
    dim: str
    prompt: str | None = None
    ref: Any = None  # PIL.Image.Image of the reference face (identity)
    face: np.ndarray | None = None  # ArcFace embedding of the image's main face; None = no face
    ref_face: np.ndarray | None = None


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


@dataclass
class FEvalOutput:
    level_logits: torch.Tensor  # [N, 5] logits of the rating words (best first), float32
    level_score: torch.Tensor  # [N] 0..100
    reg_score: torch.Tensor | None  # [N] 0..100 (unclamped), None without a head
    hidden: torch.Tensor = field(repr=False)  # [N, H] last hidden state at the answer position, float32


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
    content.append({"type": "image"})
    images.append(row.image)
    if num_face_tokens:
        content.append(face_part(row.face))
    question = EVAL_PROMPTS[row.dim].format(prompt=(row.prompt or "").strip())
    content.append({"type": "text", "text": "\n" + question})
    messages = [{"role": "user", "content": content}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text + ANSWER_PREFIX[row.dim], images, faces


class FEvalModel(nn.Module):
    """Backbone + face tokens + LoRA experts + readouts. Use :meth:`build` to construct one."""

    def __init__(self, backbone: nn.Module, processor: Any, config: FEvalConfig, heads: FEvalHeads | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.processor = processor
        self.config = config
        self.heads = heads
        self.trained = config.mode == "trained"
        self.num_face_tokens = config.num_face_tokens if self.trained else 0
        self.face_token_id = add_face_token(processor, self.base_model) if self.trained else None
        self.level_ids = rating_token_ids(processor.tokenizer, LEVEL_WORDS)
        self.register_buffer("level_values", torch.tensor(LEVEL_VALUES, dtype=torch.float32), persistent=False)
        self.stats: PassStats | None = None  # set to a PassStats to count the fast path's work
        self._vision_has_lora: bool | None = None
        self._lora_layers: list[nn.Module] | None | bool = False  # False: not looked up yet
        self.rows_by_expert = True  # fast path: each expert on its contiguous rows (False: PEFT's per-row indexing)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        config: FEvalConfig,
        *,
        base_dir: Path | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        heads_state: dict[str, torch.Tensor] | None = None,
        adapters_dir: Path | None = None,
        random_adapters: bool = False,
        attn_implementation: str | None = "sdpa",
        hub_kwargs: dict[str, Any] | None = None,
    ) -> FEvalModel:
        """Load the backbone named by ``config`` and attach experts/heads.

        ``adapters_dir`` loads saved experts; without it, trained mode makes fresh ones
        (zero-initialised LoRA B as usual, or random with ``random_adapters`` for tiny test models).
        """
        hub_kwargs = dict(hub_kwargs or {})
        source = resolve_base(config.base_model, base_dir)
        processor = load_processor(source, trust_remote_code=config.trust_remote_code, **hub_kwargs)
        backbone = load_backbone(source, dtype=dtype, device=device, attn_implementation=attn_implementation,
                                 trust_remote_code=config.trust_remote_code, **hub_kwargs)
        return cls.from_parts(backbone, processor, config, device=device, heads_state=heads_state,
                              adapters_dir=adapters_dir, random_adapters=random_adapters)

    @classmethod
    def from_parts(
        cls,
        backbone: nn.Module,
        processor: Any,
        config: FEvalConfig,
        *,
        device: str | torch.device = "cpu",
        heads_state: dict[str, torch.Tensor] | None = None,
        adapters_dir: Path | None = None,
        random_adapters: bool = False,
    ) -> FEvalModel:
        """Wrap an already loaded backbone and processor (e.g. built from a config in memory, as the
        benchmarks do) and attach experts/heads as :meth:`build` does."""
        from .vision_attention import batch_window_attention

        _limit_resolution(processor, config.max_image_pixels)
        backbone.requires_grad_(False)
        backbone.eval()
        batch_window_attention(backbone)  # one SDPA call per vision layer instead of one per window
        hidden = _text_hidden_size(backbone)
        if config.hidden_size is None:
            config.hidden_size = hidden
        elif config.hidden_size != hidden:
            from .errors import ConfigError

            raise ConfigError(f"checkpoint was trained on a backbone with hidden size {config.hidden_size}, but "
                              f"{config.base_model!r} has {hidden}; point base_model at the backbone it was trained on")
        heads = None
        if config.mode == "trained":
            backbone = _attach_experts(backbone, config, adapters_dir, random_adapters)
            heads = FEvalHeads(config.face_dim, hidden, config.num_face_tokens)
            if heads_state is not None:
                missing, unexpected = heads.load_state_dict(heads_state, strict=False)
                if missing or unexpected:
                    from .errors import CheckpointError

                    raise CheckpointError(f"projectors.safetensors does not match this config: missing {missing}, "
                                          f"unexpected {unexpected}")
            heads.to(device=device, dtype=torch.float32)
        model = cls(backbone, processor, config, heads)
        return model.to(device)

    # -- properties ---------------------------------------------------------------------------
    @property
    def base_model(self) -> nn.Module:
        """The transformers model under any PEFT wrapper."""
        bb = self.backbone
        return bb.get_base_model() if hasattr(bb, "get_base_model") else bb

    @property
    def device(self) -> torch.device:
        return self.base_model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base_model.get_input_embeddings().weight.dtype

    def cast_experts(self, dtype: torch.dtype) -> None:
        """Keep the LoRA experts in ``dtype`` (for inference in bf16/fp16: PEFT stores them in fp32 and then
        casts the activations to fp32 in every expert layer). Training keeps fp32 experts."""
        for name, p in self.backbone.named_parameters():
            if "lora_" in name and p.dtype != dtype:
                p.data = p.data.to(dtype)

    def trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Facial projector, router, score head and every expert's LoRA weights (and turns their grads on)."""
        if self.heads is None:
            return
        for name, p in self.heads.named_parameters():
            p.requires_grad_(True)
            yield f"heads.{name}", p
        for name, p in self.backbone.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)
                yield name, p

    # -- inputs -------------------------------------------------------------------------------
    def _row_texts(self, rows: Sequence[Row]) -> tuple[list[str], list[list[Any]], list[list[np.ndarray | None]]]:
        """Chat text, images (in order) and face vectors (in token order) of each row."""
        texts, row_images, row_faces = [], [], []
        for row in rows:
            if row.dim == "identity" and row.ref is None:
                raise ValueError("an identity row needs a reference image")
            text, imgs, fs = build_row_text(self.processor, row, self.num_face_tokens)
            texts.append(text)
            row_images.append(imgs)
            row_faces.append(fs)
        return texts, row_images, row_faces

    def collate(self, rows: Sequence[Row]) -> FEvalBatch:
        """Turn rows into processor outputs (padded on the left), dimension indices and face vectors."""
        texts, row_images, row_faces = self._row_texts(rows)
        images = [im for imgs in row_images for im in imgs]
        faces = [f for fs in row_faces for f in fs]
        inputs = dict(self.processor(images=images, text=texts, return_tensors="pt", padding=True))
        inputs.pop("token_type_ids", None)
        face_tensor = None
        if self.num_face_tokens:
            dim = self.config.face_dim
            face_tensor = torch.from_numpy(np.stack([
                np.asarray(f, dtype=np.float32).reshape(dim) if f is not None else np.zeros(dim, np.float32)
                for f in faces]))
        dim_idx = torch.tensor([DIM_INDEX[r.dim] for r in rows], dtype=torch.long)
        return FEvalBatch(inputs, dim_idx, [r.dim for r in rows], face_tensor)

    # -- forward ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _face_tokens(self, faces: torch.Tensor | None) -> Iterator[None]:
        """Replace the embeddings of face placeholder tokens by projected face vectors."""
        if not self.num_face_tokens or faces is None:
            yield
            return
        assert self.heads is not None
        projected = self.heads.face_projector(faces.float())
        token_id = self.face_token_id

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            ids = args[0]
            mask = ids == token_id
            count = int(mask.sum())
            if count == 0:
                return output
            if count != projected.shape[0]:
                raise RuntimeError(f"{count} face tokens in the batch but {projected.shape[0]} projected face vectors")
            return output.masked_scatter(mask.unsqueeze(-1), projected.to(output.dtype))

        handle = self.base_model.get_input_embeddings().register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def forward(self, batch: FEvalBatch) -> FEvalOutput:
        level_logits, hidden = self._run(dict(batch.inputs), batch.faces, batch.dims)
        return self._readout(level_logits, hidden, batch.dim_idx)

    def _run(self, kwargs: dict[str, Any], faces: torch.Tensor | None, dims: Sequence[str],
             *, by_range: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """One backbone pass; returns the rating-word logits and the last hidden state at the answer position.

        ``by_range``: rows are grouped by dimension, so each expert runs on its contiguous rows
        (:mod:`~feval_core.experts`) instead of through PEFT's per-row indexing.
        """
        captured: dict[str, torch.Tensor] = {}

        def grab_hidden(module: nn.Module, args: tuple) -> None:
            captured["hidden"] = args[0]

        kwargs["logits_to_keep"] = 1
        kwargs["use_cache"] = False
        experts: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if self.trained:
            ranges = contiguous_ranges(dims) if by_range else None
            layers = self._expert_layers() if ranges is not None else None
            if ranges is not None and layers is not None:
                experts = expert_ranges(layers, ranges)
            else:
                kwargs["adapter_names"] = list(dims)
        handle = self.base_model.get_output_embeddings().register_forward_pre_hook(grab_hidden)
        try:
            with self._face_tokens(faces), experts:
                out = self.backbone(**kwargs)
        finally:
            handle.remove()
        return out.logits[:, -1, self.level_ids].float(), captured["hidden"][:, -1, :].float()

    def _readout(self, level_logits: torch.Tensor, hidden: torch.Tensor, dim_idx: torch.Tensor) -> FEvalOutput:
        level_score = level_logits.softmax(-1) @ self.level_values
        reg = self.heads.head(hidden, dim_idx) if self.heads is not None else None
        return FEvalOutput(level_logits, level_score, reg, hidden)

    # -- fast path: images prepared once, vision once per image, length buckets -----------------
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
        (see :func:`~feval_core.batching.length_buckets`) instead of one pass padded to the longest row.
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

    def _expert_layers(self) -> list[nn.Module] | None:
        if self._lora_layers is False:
            self._lora_layers = lora_linears(self.backbone)
        return self._lora_layers  # type: ignore[return-value]

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

    def _face_tensor(self, faces: list[np.ndarray | None]) -> torch.Tensor | None:
        if not self.num_face_tokens:
            return None
        dim = self.config.face_dim
        return torch.from_numpy(np.stack([
            np.asarray(f, dtype=np.float32).reshape(dim) if f is not None else np.zeros(dim, np.float32)
            for f in faces]))

    def scores(self, out: FEvalOutput) -> torch.Tensor:
        """Final 0..100 scores per the configured readout."""
        mode = self.config.score_mode
        if mode == "levels" or out.reg_score is None:
            return out.level_score
        reg = out.reg_score.clamp(0.0, 100.0)
        return reg if mode == "regression" else (reg + out.level_score) / 2

    def route(self, eval_prompts: Sequence[str]) -> torch.Tensor:
        """Router logits ``[N, 4]`` over :data:`DIMENSIONS` for free-form evaluation prompts."""
        if self.heads is None:
            raise RuntimeError("zero-shot models have no router; pass the dimension explicitly")
        tok = self.processor.tokenizer(list(eval_prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        with torch.no_grad():
            emb = self.base_model.get_input_embeddings()(ids).float()
        pooled = (emb * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.heads.router(pooled)

    def routed_dims(self, eval_prompts: Sequence[str]) -> list[str]:
        return [DIMENSIONS[i] for i in self.route(eval_prompts).argmax(-1).tolist()]


# -- helpers ----------------------------------------------------------------------------------
def resolve_base(base_model: str, base_dir: Path | None) -> str:
    """A relative ``base_model`` is a folder inside the checkpoint; anything else is a hub id or absolute path."""
    if base_dir is not None and not Path(base_model).is_absolute():
        candidate = (base_dir / base_model).resolve()
        if candidate.is_dir():
            if not candidate.is_relative_to(base_dir.resolve()):
                from .errors import CheckpointError

                raise CheckpointError(f"base_model {base_model!r} points outside the checkpoint folder {base_dir}")
            return str(candidate)
    return base_model


def _text_hidden_size(model: nn.Module) -> int:
    return int(model.get_input_embeddings().weight.shape[1])


def _limit_resolution(processor: Any, max_pixels: int | None) -> None:
    """Cap the image resolution of processors that resize by pixel count (Qwen2-VL family)."""
    ip = getattr(processor, "image_processor", None)
    size = getattr(ip, "size", None)
    if not max_pixels or size is None:
        return
    longest = getattr(size, "longest_edge", None) if not isinstance(size, dict) else size.get("longest_edge")
    shortest = getattr(size, "shortest_edge", None) if not isinstance(size, dict) else size.get("shortest_edge")
    if longest is not None and shortest is not None and type(ip).__name__.startswith("Qwen2VL"):
        ip.size = {"shortest_edge": min(int(shortest), int(max_pixels)), "longest_edge": int(max_pixels)}


def _attach_experts(backbone: nn.Module, config: FEvalConfig, adapters_dir: Path | None, random_init: bool) -> nn.Module:
    from peft import LoraConfig, PeftModel, get_peft_model

    dims = list(config.dims)
    if adapters_dir is not None:
        from .errors import CheckpointError

        for d in dims:
            if not (adapters_dir / d / "adapter_model.safetensors").is_file():
                raise CheckpointError(f"expert {d!r} is missing: expected {adapters_dir / d}/adapter_model.safetensors")
        model = PeftModel.from_pretrained(backbone, str(adapters_dir / dims[0]), adapter_name=dims[0])
        for d in dims[1:]:
            model.load_adapter(str(adapters_dir / d), adapter_name=d)
    else:
        lcfg = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=config.lora_target_modules, bias="none",
                          init_lora_weights=not random_init)
        model = get_peft_model(backbone, lcfg, adapter_name=dims[0])
        for d in dims[1:]:
            model.add_adapter(d, lcfg)
        n_lora = sum(1 for n, _ in model.named_modules() if n.endswith("lora_A"))
        if n_lora == 0:
            from .errors import ConfigError

            raise ConfigError(f"lora_target_modules {config.lora_target_modules!r} matched no module of "
                              f"{config.base_model!r}; set it to a regex of the LLM's FFN projections")
    model.requires_grad_(False)
    model.eval()
    return model


def save_experts(backbone: nn.Module, folder: Path) -> None:
    """Write one standard PEFT adapter folder per expert under ``folder/<dim>``."""
    folder.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(str(folder), safe_serialization=True)
    # PEFT puts an adapter named "default" at the root; ours are all named after dimensions.
    names = list(getattr(backbone, "peft_config", {}))
    missing = [n for n in names if not (folder / n / "adapter_model.safetensors").is_file()]
    if missing:
        raise RuntimeError(f"PEFT did not write experts {missing} under {folder}")
