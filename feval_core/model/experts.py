"""Per-row LoRA experts applied to contiguous row ranges (the fast scoring path).

PEFT's ``adapter_names`` mixes experts in one batch by indexing the activations with Python lists in every
expert layer (a host-to-device index copy, a gather and a scatter per expert and layer). When the rows of
a pass are sorted by expert, each expert's rows are one contiguous range instead: :func:`expert_ranges`
applies every expert to its range as a view, which computes the same sums without copies.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .config import FEvalConfig

Ranges = list[tuple[str, int, int]]  # (expert name, first row, end row)


def contiguous_ranges(names: Sequence[str]) -> Ranges | None:
    """``[(name, start, stop), ...]`` when equal names are adjacent, else None."""
    ranges: Ranges = []
    for i, name in enumerate(names):
        if ranges and ranges[-1][0] == name:
            ranges[-1] = (name, ranges[-1][1], i + 1)
        else:
            if any(r[0] == name for r in ranges):
                return None
            ranges.append((name, i, i + 1))
    return ranges


def lora_linears(model: nn.Module) -> list[nn.Module] | None:
    """The plain LoRA ``Linear`` layers of ``model``; None when any expert layer is of another kind
    (variants such as DoRA, merged weights, non-linear layers), which only PEFT's own path handles."""
    try:
        from peft.tuners.lora import LoraLayer
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # pragma: no cover - peft is a dependency
        return None
    found = []
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        if type(module) is not LoraLinear or getattr(module, "lora_variant", None) or module.merged:
            return None
        found.append(module)
    return found


def _range_forward(self: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    result = self.base_layer(x, *args, **kwargs)
    for name, start, stop in self._feval_ranges:
        if name not in self.lora_A:
            continue
        lora_a = self.lora_A[name]
        rows = self.lora_dropout[name](x[start:stop].to(lora_a.weight.dtype))
        delta = (self.lora_B[name](lora_a(rows)) * self.scaling[name]).to(result.dtype)
        if not delta.requires_grad or result.requires_grad:
            result[start:stop] += delta
        elif start == 0 and stop >= result.shape[0]:  # in place would make a frozen output a leaf
            result = result + delta
        else:
            result = torch.cat([result[:start], result[start:stop] + delta, result[stop:]])
    return result


@contextlib.contextmanager
def expert_ranges(layers: Sequence[nn.Module], ranges: Ranges) -> Iterator[None]:
    """Within the block, each LoRA layer in ``layers`` adds expert ``name``'s update to rows
    ``start:stop`` only (batch dimension first), as PEFT's ``adapter_names`` would."""
    for layer in layers:
        layer._feval_ranges = ranges
        layer.forward = types.MethodType(_range_forward, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward
            del layer._feval_ranges


def attach_experts(backbone: nn.Module, config: FEvalConfig, adapters_dir: Path | None, random_init: bool) -> nn.Module:
    """The backbone wrapped by PEFT with one LoRA expert per dimension on the LLM and the vision experts of
    ``config.vision_experts`` in the tower: loaded from ``adapters_dir/<name>/``, or fresh."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from .vision import vision_expert_names

    dims = list(config.dims)
    vision = vision_expert_names(config.vision_experts, dims)
    if adapters_dir is not None:
        for d in dims + vision:
            if not (adapters_dir / d / "adapter_model.safetensors").is_file():
                raise CheckpointError(f"expert {d!r} is missing: expected {adapters_dir / d}/adapter_model.safetensors")
        model = PeftModel.from_pretrained(backbone, str(adapters_dir / dims[0]), adapter_name=dims[0])
        for d in dims[1:] + vision:
            model.load_adapter(str(adapters_dir / d), adapter_name=d)
    else:
        def lora(targets: str) -> LoraConfig:
            return LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                              target_modules=targets, bias="none", init_lora_weights=not random_init)

        model = get_peft_model(backbone, lora(config.lora_target_modules), adapter_name=dims[0])
        for d in dims[1:]:
            model.add_adapter(d, lora(config.lora_target_modules))
        _check_matched(model, dims[0], config.lora_target_modules, "lora_target_modules", config.base_model)
        for v in vision:
            model.add_adapter(v, lora(config.vision_lora_target_modules))
        if vision:
            _check_matched(model, vision[0], config.vision_lora_target_modules, "vision_lora_target_modules",
                           config.base_model)
    model.requires_grad_(False)
    model.eval()
    return model


def _check_matched(model: nn.Module, adapter: str, targets: str, option: str, base: str) -> None:
    if not any(hasattr(m, "lora_A") and adapter in m.lora_A for m in model.modules()):
        raise ConfigError(f"{option} {targets!r} matched no module of {base!r}; set it to a regex of the "
                          f"{'vision tower' if option.startswith('vision') else 'LLM FFN'}'s linear layers")


def save_experts(backbone: nn.Module, folder: Path) -> None:
    """Write one standard PEFT adapter folder per expert under ``folder/<dim>``."""
    folder.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(str(folder), safe_serialization=True)
    # PEFT puts an adapter named "default" at the root; ours are all named after dimensions.
    names = list(getattr(backbone, "peft_config", {}))
    missing = [n for n in names if not (folder / n / "adapter_model.safetensors").is_file()]
    if missing:
        raise RuntimeError(f"PEFT did not write experts {missing} under {folder}; check that the folder is writable "
                           "and that peft is >= 0.17, then save again")
