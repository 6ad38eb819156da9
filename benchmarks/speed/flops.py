"""Analytic model FLOPs of the work a scoring pass did (2 x weights x tokens, plus attention), and a check that
the formula's weight count matches the model's."""

from __future__ import annotations

from typing import Any

from .backbones import BackboneSpec


def llm_params_per_token(spec: BackboneSpec, lora_rank: int) -> int:
    """Weights one token multiplies through in the LLM (all layers, one expert), excluding the LM head."""
    h, kv = spec.hidden, spec.kv_heads * spec.head_dim
    attn = h * h + 2 * h * kv + h * h
    mlp = 3 * h * spec.intermediate
    lora = 3 * lora_rank * (h + spec.intermediate)  # gate/up: A h x r, B r x inter; down: A inter x r, B r x h
    return spec.layers * (attn + mlp + lora)


def vision_params_per_patch(spec: BackboneSpec) -> int:
    d = spec.vision_hidden
    per_layer = 4 * d * d + 3 * d * spec.vision_intermediate  # qkv + proj, SwiGLU MLP
    embed = 3 * spec.temporal_patch * spec.patch * spec.patch * d
    merger = (4 * d * 4 * d + 4 * d * spec.hidden) // 4  # per merged token of 4 patches
    return spec.vision_depth * per_layer + embed + merger


def model_flops(spec: BackboneSpec, stats: Any, lora_rank: int) -> dict[str, float]:
    """Analytic FLOPs of the work in ``stats`` (a PassStats): 2 x weights x tokens, plus attention."""
    llm = 2.0 * llm_params_per_token(spec, lora_rank) * stats.tokens
    llm += 2.0 * spec.layers * spec.hidden * stats.tokens_sq  # causal QK^T and AV: 2 * h * len^2 per layer
    llm += 2.0 * spec.hidden * spec.vocab * stats.rows  # LM head at the answer position only
    d = spec.vision_hidden
    window = (spec.window // spec.patch) ** 2
    full = len(spec.fullatt)
    vision = 2.0 * vision_params_per_patch(spec) * stats.vision_inputs
    vision += 4.0 * d * window * stats.vision_inputs * (spec.vision_depth - full)
    vision += 4.0 * d * stats.vision_inputs_sq * full
    return {"llm": llm, "vision": vision, "total": llm + vision}


def check_param_count(spec: BackboneSpec, scorer: Any, lora_rank: int) -> float:
    """Counted LLM matmul weights (one expert) over the analytic count: 1.0 means the FLOP formula fits."""
    lm = scorer.model.base_model.model.language_model
    counted = 0
    for name, p in lm.layers.named_parameters():
        if p.ndim != 2:
            continue
        if "lora_" in name:
            counted += p.numel() if ".quality." in name else 0
        else:
            counted += p.numel()
    return counted / llm_params_per_token(spec, lora_rank)
