"""The F-Eval LMM: a frozen VLM backbone, face tokens from a facial projector, four LoRA experts
(one per dimension, chosen per row) and two score readouts (rating words, regression head)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..dimensions import DIM_INDEX, DIMENSIONS, LEVEL_VALUES, LEVEL_WORDS
from ..errors import CheckpointError, ConfigError
from .backbone import (
    add_face_token,
    escape_special,
    load_backbone,
    load_processor,
    rating_token_ids,
)
from .batching import PassStats
from .config import PROJECTORS_NAME, VISION_PROJECTOR_NAME, FEvalConfig
from .experts import attach_experts, contiguous_ranges, expert_ranges, lora_linears
from .heads import FEvalHeads
from .rows import FEvalBatch, FEvalOutput, Row, build_row_text, face_tensor
from .shared_vision import SharedVision
from .vision import merge_vision_expert, mergeable_expert, vision_projector

logger = logging.getLogger(__name__)

ROUTER_TOKENS_KEY = "router.tokens.weight"
"""The router's token scores; checkpoints written before the router read tokens lack it (zeros: no effect)."""


class FEvalModel(SharedVision, nn.Module):
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
        self.vision_experts = config.vision_experts if self.trained else "none"
        self._lora_layers: list[nn.Module] | None | bool = False  # False: not looked up yet
        self.vision_merged = False  # the shared vision expert is merged into the tower (scoring only)
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
        vision_projector_state: dict[str, torch.Tensor] | None = None,
        merge_vision: bool = False,
    ) -> FEvalModel:
        """Load the backbone named by ``config`` and attach experts/heads.

        ``adapters_dir`` loads saved experts; without it, trained mode makes fresh ones
        (zero-initialised LoRA B as usual, or random with ``random_adapters`` for tiny test models).
        ``vision_projector_state`` replaces the backbone's vision projector (a checkpoint that trained it).
        ``merge_vision``: merge a shared vision expert into the tower (:meth:`merge_vision_expert`), as the
        scorers' ``from_pretrained`` do; training and resuming keep it unmerged (the default here).
        """
        hub_kwargs = dict(hub_kwargs or {})
        source = resolve_base(config.base_model, base_dir)
        processor = load_processor(source, trust_remote_code=config.trust_remote_code, **hub_kwargs)
        backbone = load_backbone(source, dtype=dtype, device=device, attn_implementation=attn_implementation,
                                 trust_remote_code=config.trust_remote_code, **hub_kwargs)
        return cls.from_parts(backbone, processor, config, device=device, heads_state=heads_state,
                              adapters_dir=adapters_dir, random_adapters=random_adapters,
                              vision_projector_state=vision_projector_state, merge_vision=merge_vision)

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
        vision_projector_state: dict[str, torch.Tensor] | None = None,
        merge_vision: bool = False,
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
            raise ConfigError(f"checkpoint was trained on a backbone with hidden size {config.hidden_size}, but "
                              f"{config.base_model!r} has {hidden}; point base_model at the backbone it was trained on")
        if vision_projector_state is not None:
            _load_state(vision_projector(backbone), vision_projector_state, VISION_PROJECTOR_NAME)
        heads = None
        if config.mode == "trained":
            backbone = attach_experts(backbone, config, adapters_dir, random_adapters)
            vocab = int(backbone.get_input_embeddings().weight.shape[0])
            heads = FEvalHeads(config.face_dim, hidden, config.num_face_tokens, vocab_size=vocab + 1)
            if heads_state is not None:
                _load_state(heads, heads_state, PROJECTORS_NAME, optional=ROUTER_TOKENS_KEY)
            heads.to(device=device, dtype=torch.float32)
        model = cls(backbone, processor, config, heads)
        if model.vision_experts != "none" and not model.can_share_vision:
            raise ConfigError(f"vision_experts={config.vision_experts!r} needs a backbone whose processor names its "
                              f"image token and that has get_image_features; {type(model.base_model).__name__} does "
                              "not: use vision_experts='none'")
        model.to(device)
        if merge_vision:
            model.merge_vision_expert()
        return model

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

    def merge_vision_expert(self) -> bool:
        """Merge the shared vision expert into the vision tower's weights and drop its LoRA layers, so that the
        tower runs as a plain tower (scoring only); returns whether it merged. The LLM's experts stay as they are
        (one per dimension, chosen per row). Per-dimension vision experts cannot be merged (each dimension's rows
        need the tower with their own expert): they, and a model without vision experts, are left as they are.

        Scores equal the unmerged model's up to float rounding, and gradients still reach the pixels (the
        differentiable reward); but the expert's own weights are gone: a merged model cannot be trained or
        saved (load with ``merge_vision=False`` for that). A vision expert that shares layers with the LLM's
        experts is left unmerged, with a warning.
        """
        name = mergeable_expert(self.vision_experts, self.config.dims) if self.trained else None
        if name is None or self.vision_merged:
            return False
        try:
            count = merge_vision_expert(self.backbone, name)
        except ConfigError as exc:
            logger.warning("scoring with the vision expert unmerged: %s", exc)
            return False
        self.vision_merged = True
        self._lora_layers = False  # look the LLM's expert layers up again
        self.__dict__.pop("_vision_lora", None)
        logger.info("merged the vision expert %r into %d vision-tower layers", name, count)
        return True

    def check_unmerged(self, action: str) -> None:
        """Refuse ``action`` (training, saving) on a model whose vision expert is merged into the tower."""
        if self.vision_merged:
            raise ConfigError(f"cannot {action}: this model's vision expert is merged into the vision tower (the "
                              "default when a checkpoint is loaded for scoring), so its LoRA weights are gone. Load "
                              "the checkpoint with merge_vision=False (FEvalScorer.from_pretrained(..., "
                              f"merge_vision=False), VideoScorer.from_pretrained(..., merge_vision=False)) to {action}")

    def cast_experts(self, dtype: torch.dtype) -> None:
        """Keep the LoRA experts in ``dtype`` (for inference in bf16/fp16: PEFT stores them in fp32 and then
        casts the activations to fp32 in every expert layer). Training keeps fp32 experts."""
        for name, p in self.backbone.named_parameters():
            if "lora_" in name and p.dtype != dtype:
                p.data = p.data.to(dtype)

    @property
    def vision_projector(self) -> nn.Module:
        """The backbone's vision projector (trained when ``config.vision_projector == "trained"``)."""
        return vision_projector(self.base_model)

    def trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Facial projector, router, score head, every expert's LoRA weights (LLM and vision tower) and, when the
        config says so, the vision projector; turns their gradients on."""
        if self.heads is None:
            return
        self.check_unmerged("train it")
        for name, p in self.heads.named_parameters():
            p.requires_grad_(True)
            yield f"heads.{name}", p
        for name, p in self.backbone.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)
                yield name, p
        if self.config.vision_projector == "trained":
            for name, p in self.vision_projector.named_parameters():
                p.requires_grad_(True)
                yield f"vision_projector.{name}", p

    # -- inputs -------------------------------------------------------------------------------
    def _row_texts(self, rows: Sequence[Row]) -> tuple[list[str], list[list[Any]], list[list[np.ndarray | None]]]:
        """Chat text, images (in order) and face vectors (in token order) of each row."""
        texts, row_images, row_faces = [], [], []
        for row in rows:
            if row.dim == "identity" and row.ref is None:
                raise ValueError("an identity row needs a reference image: give Row(ref=...) or ask another dimension")
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
        dim_idx = torch.tensor([DIM_INDEX[r.dim] for r in rows], dtype=torch.long)
        return FEvalBatch(inputs, dim_idx, [r.dim for r in rows], self._face_tensor(faces))

    def _face_tensor(self, faces: list[np.ndarray | None]) -> torch.Tensor | None:
        """Face vectors in token order (None when the model has no face tokens)."""
        return face_tensor(faces, self.config.face_dim) if self.num_face_tokens else None

    # -- forward ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _face_tokens(self, faces: torch.Tensor | None) -> Iterator[None]:
        """Replace the embeddings of face placeholder tokens by projected face vectors."""
        if not self.num_face_tokens or faces is None:
            yield
            return
        assert self.heads is not None
        with self.placeholder_tokens(self.heads.face_projector(faces.float())):
            yield

    @contextlib.contextmanager
    def placeholder_tokens(self, projected: torch.Tensor) -> Iterator[None]:
        """Within the block, the placeholder tokens of a batch (in text order) take the rows of ``projected``
        (``[n_tokens, hidden]``) as their embeddings; the video model puts its projected features there too."""
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
        """One pass over collated rows, the backbone running its own vision tower (no vision experts)."""
        if self.vision_experts != "none":
            raise ConfigError("a model with vision experts scores through score_rows (the tower runs once per expert); "
                              "FEvalModel.forward runs the tower through PEFT, which cannot pick experts in it")
        level_logits, hidden = self._run(dict(batch.inputs), batch.faces, batch.dims)
        return self._readout(level_logits, hidden, batch.dim_idx)

    def _run(self, kwargs: dict[str, Any], faces: torch.Tensor | None, dims: Sequence[str],
             *, by_range: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """One backbone pass; returns the rating-word logits and the last hidden state at the answer position.

        ``by_range``: rows are grouped by dimension, so each expert runs on its contiguous rows
        (:mod:`~feval_core.model.experts`) instead of through PEFT's per-row indexing.
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

    def _expert_layers(self) -> list[nn.Module] | None:
        if self._lora_layers is False:
            self._lora_layers = lora_linears(self.backbone)
        return self._lora_layers  # type: ignore[return-value]

    def scores(self, out: FEvalOutput) -> torch.Tensor:
        """Final 0..100 scores per the configured readout."""
        mode = self.config.score_mode
        if mode == "levels" or out.reg_score is None:
            return out.level_score
        reg = out.reg_score.clamp(0.0, 100.0)
        return reg if mode == "regression" else (reg + out.level_score) / 2

    def route(self, eval_prompts: Sequence[str]) -> torch.Tensor:
        """Router logits ``[N, 4]`` over :data:`DIMENSIONS` for free-form evaluation prompts (user text is
        escaped: a special-token string in a question is plain text)."""
        if self.heads is None:
            raise RuntimeError("zero-shot models have no router; ask for dimensions by name (dims=...)")
        tok_ = self.processor.tokenizer
        texts = [escape_special(" ".join(str(q).split()), tok_) for q in eval_prompts]
        tok = tok_(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        with torch.no_grad():
            emb = self.base_model.get_input_embeddings()(ids).float()
        pooled = (emb * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.heads.router(pooled, ids, mask)

    def routed_dims(self, eval_prompts: Sequence[str]) -> list[str]:
        return [DIMENSIONS[i] for i in self.route(eval_prompts).argmax(-1).tolist()]


# -- helpers ----------------------------------------------------------------------------------
def resolve_base(base_model: str, base_dir: Path | None) -> str:
    """A relative ``base_model`` is a folder inside the checkpoint; anything else is a hub id or absolute path."""
    if base_dir is not None and not Path(base_model).is_absolute():
        candidate = (base_dir / base_model).resolve()
        if candidate.is_dir():
            if not candidate.is_relative_to(base_dir.resolve()):

                raise CheckpointError(f"base_model {base_model!r} points outside the checkpoint folder {base_dir}")
            return str(candidate)
    return base_model


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], filename: str, optional: str = "") -> None:
    """Load ``state`` into ``module``; only the key ``optional`` may be missing (it keeps its initial value)."""
    fix = ("point base_model at the backbone the checkpoint was trained on, or re-save it with the feval that "
           "trained it")
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes differ: another backbone, vocabulary or config
        raise CheckpointError(f"{filename} does not fit this backbone ({exc}); {fix}") from exc
    missing = [k for k in missing if k != optional]
    if missing or unexpected:
        raise CheckpointError(f"{filename} does not match this config and backbone: missing {missing}, unexpected "
                              f"{unexpected}; {fix}")


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


