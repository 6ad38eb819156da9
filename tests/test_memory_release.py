"""A scorer and its model are freed as soon as the last reference goes, with the garbage collector off.

ComfyUI keeps weak references to loaded models and runs a full garbage collection, with "Potential memory leak
detected", whenever a model outlives its patcher; a reference cycle through the scorer made that happen every
time the loader's output was dropped (issue 17).
"""

from __future__ import annotations

import gc
import shutil
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from feval_core import FEvalScorer


@contextmanager
def no_gc() -> Iterator[None]:
    """The cyclic garbage collector off: only reference counting frees objects in the block."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def freed(ref: weakref.ref) -> bool:
    return ref() is None


@pytest.mark.parametrize("mode", ["trained", "zero_shot"])
def test_scorer_and_model_are_freed_by_reference_counting(mode: str, tiny_ckpt: Path, faces) -> None:
    with no_gc():
        if mode == "trained":
            scorer = FEvalScorer.from_pretrained(tiny_ckpt, device="cpu")
        else:
            scorer = FEvalScorer.zero_shot(str(tiny_ckpt / "backbone"), face_pack="tiny_face",
                                           face_root=tiny_ckpt / "face_pack", device="cpu")
        scorer.workers = 2  # worker threads take processor copies from the pool
        result = scorer.score(np.stack([faces["a"], faces["b"], faces["none"]]), "a photo", dims=None, batch_size=2)
        assert result.scores.shape == (3, 4) and scorer._processors.created >= 1
        model, whole = weakref.ref(scorer.model), weakref.ref(scorer)
        del scorer
        assert freed(whole), "the scorer is held by a reference cycle"
        assert freed(model), "the model is held by a reference cycle"


@pytest.fixture(scope="module")
def comfy(tmp_path_factory: pytest.TempPathFactory, tiny_ckpt: Path):
    from tests.comfy_stub import install, load_pack, node_classes

    base = tmp_path_factory.mktemp("ComfyUI")
    install(base)
    shutil.copytree(tiny_ckpt, base / "models" / "feval" / "tiny")
    nodes = node_classes(load_pack())
    import comfy.model_management as mm

    return nodes, mm


def test_dropping_the_loaders_output_frees_the_model_without_a_full_collection(comfy, faces) -> None:
    """What ComfyUI does: load, score (the model enters model management), drop the loader's output, then clean up
    before the next run. No leak is detected and the model is gone at once."""
    nodes, mm = comfy
    images = np.stack([faces["a"], faces["none"]]).astype(np.float32) / 255.0
    import torch

    with no_gc():
        handle = nodes["FEvalModelLoader"].execute("models folder", "tiny", "", "auto", "cpu", "auto")[0]
        out = nodes["FEvalScoreFaces"].execute(handle, torch.from_numpy(images), identity=False, batch_size=1)
        assert handle.patcher in mm.loaded_models()
        model = weakref.ref(handle.scorer.model)
        mm.EVENTS.clear()
        del handle, out
        mm.cleanup_models_gc()
        assert not [e for e in mm.EVENTS if e[0] in ("leak_gc", "leak")], mm.EVENTS
        assert freed(model)
        assert not mm.current_loaded_models  # ComfyUI's list lets go of it too
