"""Stub of ``comfy.model_patcher.ModelPatcher``: the constructor and bookkeeping of the real class.

The memory moves (``load``, ``partially_load``, ``partially_unload``, ``detach``) of the real class walk a
model built from ComfyUI's own layers; here they raise, so a test proves that a pack's subclass overrides
every one that model management calls.
"""

from __future__ import annotations

import uuid

import comfy.model_management


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.size = size
        self.model = model
        if not hasattr(self.model, "device"):
            self.model.device = offload_device
        self.patches = {}
        self.backup = {}
        self.object_patches = {}
        self.model_options = {"transformer_options": {}}
        self.model_size()
        self.load_device = load_device
        self.offload_device = offload_device
        self.weight_inplace_update = weight_inplace_update
        self.patches_uuid = uuid.uuid4()
        self.parent = None
        for name, value in (("model_loaded_weight_memory", 0), ("lowvram_patch_counter", 0),
                            ("model_lowvram", False), ("current_weight_patches_uuid", None)):
            if not hasattr(self.model, name):
                setattr(self.model, name, value)

    def model_size(self):
        if self.size > 0:
            return self.size
        self.size = comfy.model_management.module_size(self.model)
        return self.size

    def loaded_size(self):
        return self.model.model_loaded_weight_memory

    def lowvram_patch_counter(self):
        return self.model.lowvram_patch_counter

    def is_clone(self, other):
        return hasattr(other, "model") and self.model is other.model

    def model_patches_to(self, device):
        pass

    def model_patches_models(self):
        return []

    def model_dtype(self):
        if hasattr(self.model, "get_dtype"):
            return self.model.get_dtype()

    def current_loaded_device(self):
        return self.model.device

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        raise AssertionError("stub: ModelPatcher.load walks ComfyUI layers; a pack's patcher must override it")

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
        raise AssertionError("stub: a pack's patcher must override partially_load")

    def partially_unload(self, device_to, memory_to_free=0):
        raise AssertionError("stub: a pack's patcher must override partially_unload")

    def detach(self, unpatch_all=True):
        raise AssertionError("stub: a pack's patcher must override detach")

    def __del__(self):
        try:
            self.detach(unpatch_all=False)
        except AssertionError:
            pass
