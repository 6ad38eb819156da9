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
from .config import FEvalConfig
from .dimensions import ANSWER_PREFIX, DIM_INDEX, DIMENSIONS, EVAL_PROMPTS, LEVEL_VALUES, LEVEL_WORDS
from .modules import FEvalHeads

logger = logging.getLogger(__name__)


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
        _limit_resolution(processor, config.max_image_pixels)
        backbone = load_backbone(source, dtype=dtype, device=device, attn_implementation=attn_implementation,
                                 trust_remote_code=config.trust_remote_code, **hub_kwargs)
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
    def collate(self, rows: Sequence[Row]) -> FEvalBatch:
        """Turn rows into processor outputs (padded on the left), dimension indices and face vectors."""
        texts: list[str] = []
        images: list[Any] = []
        faces: list[np.ndarray | None] = []
        for row in rows:
            if row.dim == "identity" and row.ref is None:
                raise ValueError("an identity row needs a reference image")
            text, imgs, fs = build_row_text(self.processor, row, self.num_face_tokens)
            texts.append(text)
            images.extend(imgs)
            faces.extend(fs)
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
        captured: dict[str, torch.Tensor] = {}

        def grab_hidden(module: nn.Module, args: tuple) -> None:
            captured["hidden"] = args[0]

        kwargs: dict[str, Any] = dict(batch.inputs)
        kwargs["logits_to_keep"] = 1
        kwargs["use_cache"] = False
        if self.trained:
            kwargs["adapter_names"] = batch.dims
        handle = self.base_model.get_output_embeddings().register_forward_pre_hook(grab_hidden)
        try:
            with self._face_tokens(batch.faces):
                out = self.backbone(**kwargs)
        finally:
            handle.remove()
        hidden = captured["hidden"][:, -1, :].float()
        level_logits = out.logits[:, -1, self.level_ids].float()
        level_score = level_logits.softmax(-1) @ self.level_values
        reg = self.heads.head(hidden, batch.dim_idx) if self.heads is not None else None
        return FEvalOutput(level_logits, level_score, reg, hidden)

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
