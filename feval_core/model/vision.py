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
LLM pass (``mm_encoder_outputs``).
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
