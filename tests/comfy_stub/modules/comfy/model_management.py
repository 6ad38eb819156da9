"""Stub of ``comfy.model_management``: the loaded-model list and the calls it makes on model patchers.

``load_models_gpu`` / ``free_memory`` / ``unload_all_models`` drive a patcher through the same methods, in
the same order, as ComfyUI v0.3.6x (``partially_load``, ``partially_unload``, ``detach``, ``model_size``,
``loaded_size``, ``current_loaded_device``, ``is_clone``, ``model_patches_to``, ``model_patches_models``), so
a pack's patcher is checked against that protocol. ``EVENTS`` records what happened, for assertions.
"""

from __future__ import annotations

import gc
import logging
import threading
import weakref

import torch

EVENTS: list[tuple] = []
current_loaded_models: list[LoadedModel] = []
TORCH_DEVICE = torch.device("cpu")


class InterruptProcessingException(Exception):
    pass


_interrupt_mutex = threading.RLock()
_interrupt = False


def interrupt_current_processing(value: bool = True) -> None:
    global _interrupt
    with _interrupt_mutex:
        _interrupt = value


def processing_interrupted() -> bool:
    with _interrupt_mutex:
        return _interrupt


def throw_exception_if_processing_interrupted() -> None:
    global _interrupt
    with _interrupt_mutex:
        if _interrupt:
            _interrupt = False
            raise InterruptProcessingException()


def get_torch_device() -> torch.device:
    return TORCH_DEVICE


def unet_offload_device() -> torch.device:
    return torch.device("cpu")


def text_encoder_offload_device() -> torch.device:
    return torch.device("cpu")


def should_use_bf16(device=None, model_params=0, prioritize_performance=True, manual_cast=False) -> bool:
    return False


def should_use_fp16(device=None, model_params=0, prioritize_performance=True, manual_cast=False) -> bool:
    return False


def soft_empty_cache(force: bool = False) -> None:
    EVENTS.append(("soft_empty_cache",))


def module_size(module: torch.nn.Module) -> int:
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())


class LoadedModel:
    def __init__(self, model) -> None:
        self._model = weakref.ref(model)
        self.device = model.load_device
        self.real_model = None
        self.currently_used = True
        self.model_finalizer = None

    @property
    def model(self):
        return self._model()

    def model_memory(self) -> int:
        return self.model.model_size()

    def model_offloaded_memory(self) -> int:
        return self.model.model_size() - self.model.loaded_size()

    def model_memory_required(self, device) -> int:
        if device == self.model.current_loaded_device():
            return self.model_offloaded_memory()
        return self.model_memory()

    def model_load(self, lowvram_model_memory=0, force_patch_weights=False):
        self.model.model_patches_to(self.device)
        self.model.model_patches_to(self.model.model_dtype())
        extra = lowvram_model_memory if lowvram_model_memory else 1e32
        loaded = self.model.partially_load(self.device, extra, force_patch_weights=force_patch_weights)
        EVENTS.append(("load", self.model, loaded))
        real_model = self.model.model
        self.real_model = weakref.ref(real_model)
        self.model_finalizer = weakref.finalize(real_model, cleanup_models)
        return real_model

    def model_unload(self, memory_to_free=None, unpatch_weights=True) -> bool:
        if memory_to_free is not None and memory_to_free < self.model.loaded_size():
            freed = self.model.partially_unload(self.model.offload_device, memory_to_free)
            EVENTS.append(("partially_unload", self.model, freed))
            if freed >= memory_to_free:
                return False
        self.model.detach(unpatch_weights)
        EVENTS.append(("detach", self.model))
        self.model_finalizer.detach()
        self.model_finalizer = None
        self.real_model = None
        return True

    def __eq__(self, other) -> bool:
        return self.model is other.model

    def is_dead(self) -> bool:
        return self.real_model is not None and self.real_model() is not None and self.model is None


def cleanup_models() -> None:
    for i in range(len(current_loaded_models) - 1, -1, -1):
        if current_loaded_models[i].real_model is None or current_loaded_models[i].real_model() is None:
            current_loaded_models.pop(i)


def cleanup_models_gc() -> None:
    """As ComfyUI does before each run: a loaded model whose patcher is gone while the model itself lives on is
    held by a reference cycle; log it, collect, and warn if it still lives (``EVENTS`` records both)."""
    if any(lm.is_dead() for lm in current_loaded_models):
        dead = next(lm for lm in current_loaded_models if lm.is_dead())
        logging.info("Potential memory leak detected with model %s, doing a full garbage collect, for maximum "
                     "performance avoid circular references in the model code.", type(dead.real_model()).__name__)
        EVENTS.append(("leak_gc", type(dead.real_model()).__name__))
        gc.collect()
        soft_empty_cache()
        for lm in current_loaded_models:
            if lm.is_dead():
                EVENTS.append(("leak", type(lm.real_model()).__name__))
    cleanup_models()


def free_memory(memory_required, device, keep_loaded=()) -> list[LoadedModel]:
    unloaded = []
    for i in range(len(current_loaded_models) - 1, -1, -1):
        lm = current_loaded_models[i]
        if lm.device == device and lm not in keep_loaded and not lm.is_dead():
            lm.currently_used = False
            if lm.model_unload(memory_required):
                unloaded.append(current_loaded_models.pop(i))
    if unloaded:
        soft_empty_cache()
    return unloaded


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False) -> None:
    EVENTS.append(("load_models_gpu", tuple(models), force_full_load))
    wanted = []
    for m in models:
        wanted.append(m)
        wanted.extend(m.model_patches_models())
    to_load = []
    for m in wanted:
        lm = LoadedModel(m)
        if lm in current_loaded_models:
            existing = current_loaded_models[current_loaded_models.index(lm)]
            existing.currently_used = True
            to_load.append(existing)
        else:
            to_load.append(lm)
    for lm in to_load:
        for i in range(len(current_loaded_models) - 1, -1, -1):
            other = current_loaded_models[i]
            if other is not lm and lm.model.is_clone(other.model):
                current_loaded_models.pop(i).model.detach(unpatch_all=False)
    for lm in to_load:
        lm.model_memory_required(lm.device)
        lm.model_load(0 if force_full_load else 1e32, force_patch_weights=force_patch_weights)
        if lm in current_loaded_models:
            current_loaded_models.remove(lm)
        current_loaded_models.insert(0, lm)


def load_model_gpu(model) -> None:
    load_models_gpu([model])


def loaded_models(only_currently_used: bool = False) -> list:
    return [lm.model for lm in current_loaded_models if lm.currently_used or not only_currently_used]


def unload_all_models() -> None:
    free_memory(1e30, get_torch_device())
