"""The FEVAL_MODEL handle and the model patcher that hands the F-Eval model to ComfyUI's model management.

ComfyUI keeps a list of loaded models and moves them with their patchers: ``load_models_gpu`` calls
``partially_load`` to bring a model onto the GPU, ``free_memory`` / "unload models" call
``partially_unload`` or ``detach`` to move it back to the offload device. ``FEvalModelPatcher`` subclasses
ComfyUI's ``ModelPatcher`` (so it stays compatible with the rest of that protocol) and overrides those
moves to carry the whole model at once: a transformers VLM is not built from ComfyUI's layers, so it
cannot run with part of its weights left on the CPU.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

import comfy.model_management as mm
import comfy.model_patcher
import torch

from feval_core.model.backbone import default_dtype

logger = logging.getLogger(__name__)

DEVICE_AUTO = "auto"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class FEvalModelPatcher(comfy.model_patcher.ModelPatcher):
    """Moves the whole F-Eval model between ComfyUI's load and offload devices, never part of it."""

    def _move(self, device: torch.device | str, loaded: bool) -> None:
        self.model.to(device)
        self.model.model_lowvram = False
        self.model.lowvram_patch_counter = 0
        self.model.model_loaded_weight_memory = self.model_size() if loaded else 0
        self.model.current_weight_patches_uuid = self.patches_uuid if loaded else None

    def load(self, device_to: Any = None, lowvram_model_memory: float = 0, force_patch_weights: bool = False,
             full_load: bool = False, **kwargs: Any) -> None:
        self._move(device_to or self.load_device, loaded=True)

    def partially_load(self, device_to: Any, extra_memory: float = 0, force_patch_weights: bool = False,
                       **kwargs: Any) -> int:
        """Load the whole model (there is no partial state); returns the bytes newly placed on ``device_to``."""
        before = self.loaded_size()
        if before and self.current_loaded_device() == torch.device(device_to):
            return 0
        self.load(device_to)
        logger.info("F-Eval model on %s (%.0f MB)", device_to, self.model_size() / 2**20)
        return self.loaded_size() - before

    def partially_unload(self, device_to: Any, memory_to_free: float = 0, *args: Any, **kwargs: Any) -> int:
        """Unload the whole model to ``device_to``; returns the bytes freed."""
        freed = self.loaded_size()
        self._move(device_to, loaded=False)
        return freed

    def detach(self, unpatch_all: bool = True, *args: Any, **kwargs: Any) -> Any:
        if not self.loaded_size() or sys.is_finalizing():  # nothing on the load device, or Python is exiting
            return self.model
        self._move(self.offload_device, loaded=False)
        logger.info("F-Eval model unloaded to %s", self.offload_device)
        return self.model


@dataclass(eq=False)
class FEvalHandle:
    """What a FEVAL_MODEL socket carries: the scorer, its patcher and a name for reports."""

    scorer: Any  # feval_core.FEvalScorer
    patcher: FEvalModelPatcher
    name: str

    @classmethod
    def wrap(cls, scorer: Any, name: str, load_device: torch.device, offload_device: torch.device) -> FEvalHandle:
        return cls(scorer, FEvalModelPatcher(scorer.model, load_device, offload_device), name)

    def load(self) -> None:
        """Ask ComfyUI's model management to put the model on its device (freeing others if needed)."""
        mm.load_models_gpu([self.patcher], force_full_load=True)


def device_options() -> list[str]:
    """Choices for the device widget."""
    options = [DEVICE_AUTO, "cpu"]
    if torch.cuda.is_available():
        options += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        options.append("mps")
    return options


def placement(device: str) -> tuple[torch.device, torch.device]:
    """(load device, offload device) for a device choice; ``auto`` follows ComfyUI's own choice."""
    if device == DEVICE_AUTO:
        return mm.get_torch_device(), mm.unet_offload_device()
    if device not in device_options():
        raise ValueError(f"device {device!r} is not available here; choose one of {device_options()}")
    load = torch.device(device)
    return load, torch.device("cpu")


def pick_dtype(dtype: str, load_device: torch.device) -> torch.dtype:
    """The weight dtype: ``auto`` is the engine's rule (:func:`feval_core.model.backbone.default_dtype`: bf16 where
    ComfyUI says the GPU supports it, else fp32; never fp16, which Qwen-VL activations overflow)."""
    if dtype in DTYPES:
        return DTYPES[dtype]
    if dtype != DEVICE_AUTO:
        raise ValueError(f"dtype must be one of {[DEVICE_AUTO, *DTYPES]}, got {dtype!r}")
    if load_device.type == "cpu":
        return default_dtype(load_device)
    return default_dtype(load_device, bf16=bool(mm.should_use_bf16(load_device)))
