"""The vision side of F-Eval: the vision projector and the LoRA experts inside the vision tower.

The paper trains the vision projector and puts its mixture of LoRA experts in the vision encoder as well as in
the LLM. Here the projector is the backbone's own (Qwen2-VL/2.5-VL ``visual.merger``, LLaVA and InternVL
``multi_modal_projector``) and ``vision_experts`` says how the tower's experts are shared:

* ``none`` — the tower stays frozen;
* ``shared`` — one expert (``vision``) for every dimension: the tower still runs once per image;
* ``per_dimension`` — one expert per dimension (``vision_<dimension>``): the tower runs once per image and
  dimension, each expert on its own contiguous slice of images.

PEFT's per-row ``adapter_names`` cannot select experts inside the tower (it sees one flat patch sequence), so the
tower always runs on its own, one expert at a time (:func:`vision_expert`), and its features are handed to the
LLM pass (``mm_encoder_outputs``). For scoring, a shared expert is merged into the tower's weights
(:func:`merge_vision_expert`): the tower then runs as a plain one, with no LoRA branch in its linears.
Per-dimension experts cannot be merged: each dimension's rows need the tower with their own expert.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from torch import nn

from ..errors import ConfigError
from .experts import expert_ranges

SHARED_EXPERT = "vision"


def vision_expert_names(mode: str, dims: Sequence[str]) -> list[str]:
    """The vision experts' adapter names for ``vision_experts=mode``."""
    if mode == "shared":
        return [SHARED_EXPERT]
    if mode == "per_dimension":
        return [f"{SHARED_EXPERT}_{d}" for d in dims]
    return []


def vision_expert_of(mode: str, dim: str) -> str | None:
    """The vision expert a row of dimension ``dim`` uses (None: the frozen tower)."""
    if mode == "shared":
        return SHARED_EXPERT
    if mode == "per_dimension":
        return f"{SHARED_EXPERT}_{dim}"
    return None


def is_vision_module(name: str) -> bool:
    """True for modules of the vision tower or projector (everything outside the language model and its head)."""
    return "language_model" not in name and "lm_head" not in name


def vision_projector(model: nn.Module) -> nn.Module:
    """The backbone's vision projector: the module that maps vision-tower features to LLM embeddings."""
    inner = getattr(model, "model", model)
    for path in (("visual", "merger"), ("multi_modal_projector",), ("vision_projector",), ("mm_projector",)):
        module: Any = inner
        for attr in path:
            module = getattr(module, attr, None)
            if module is None:
                break
        if isinstance(module, nn.Module):
            return module
    raise ConfigError(f"{type(model).__name__} has no vision projector feval knows (visual.merger, "
                      "multi_modal_projector); train with --no-train-vision-projector")


def vision_lora_layers(layers: Sequence[nn.Module] | None, names: dict[int, str]) -> list[nn.Module]:
    """The LoRA layers of ``layers`` that sit in the vision tower (``names`` maps ``id(layer)`` to its name)."""
    return [m for m in (layers or []) if is_vision_module(names.get(id(m), ""))]


@contextlib.contextmanager
def vision_expert(layers: Sequence[nn.Module], name: str | None) -> Iterator[None]:
    """Within the block, the vision tower's LoRA layers apply expert ``name`` to every input (none: frozen)."""
    if name is None or not layers:
        yield
        return
    with expert_ranges(layers, [(name, 0, sys.maxsize)]):
        yield


def mergeable_expert(mode: str, dims: Sequence[str]) -> str | None:
    """The one vision expert every row uses (``shared``, or ``per_dimension`` with a single dimension, as in the
    video model), which can be merged into the tower's weights; None when there is none or one per dimension."""
    names = vision_expert_names(mode, dims)
    return names[0] if len(names) == 1 else None


def merge_vision_expert(backbone: nn.Module, name: str) -> int:
    """Merge LoRA expert ``name`` into the vision tower's weights (PEFT's merge, that adapter only) and put each
    layer's plain base layer back in place of its LoRA wrapper, so the tower runs as a plain one; the LLM's
    experts are left as they are. Returns how many layers were merged.

    Refused (:class:`ConfigError`, nothing changed) when a layer holding ``name`` holds other experts too or sits
    outside the vision tower: merging it would change what those experts compute. An expert with non-finite
    weights raises PEFT's error (the model is then unusable: load it again).
    """
    from peft.tuners.lora import LoraLayer

    layers = [(n, m) for n, m in backbone.named_modules() if isinstance(m, LoraLayer) and name in m.lora_A]
    if not layers:
        raise ConfigError(f"no layer holds the vision expert {name!r}; load the checkpoint with merge_vision=False")
    mixed = [n for n, m in layers if set(m.lora_A) != {name} or not is_vision_module(n)]
    if mixed:
        raise ConfigError(f"the vision expert {name!r} shares layers with other experts ({mixed[0]}, ...): it cannot "
                          "be merged alone; keep it unmerged (merge_vision=False), or train with "
                          "vision_lora_target_modules and lora_target_modules matching different layers")
    for path, module in layers:
        module.merge(safe_merge=True, adapter_names=[name])  # safe: refuses NaNs before touching the weights
        parent, _, child = path.rpartition(".")
        setattr(backbone.get_submodule(parent), child, module.get_base_layer())
    getattr(backbone, "peft_config", {}).pop(name, None)
    return len(layers)
