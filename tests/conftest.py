"""Shared fixtures: tiny real-class checkpoints built once per test session, offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Lazily built tiny checkpoints, one per backbone family."""
    from feval_core.testing.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("ckpts")
    built: dict[str, Path] = {}

    class _Lazy(dict):
        def __missing__(self, family: str) -> Path:
            built[family] = make_tiny_checkpoint(root / family, family=family, seed=0)
            self[family] = built[family]
            return built[family]

    return _Lazy()


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_ckpts: dict[str, Path]) -> Path:
    return tiny_ckpts["qwen2_5_vl"]


@pytest.fixture(scope="session")
def tiny_scorer(tiny_ckpt: Path):
    from feval_core import FEvalScorer

    return FEvalScorer.from_pretrained(tiny_ckpt, device="cpu")


def face_image(seed: int = 0, size: int = 128, box: tuple[int, int, int, int] | None = None,
               background: int = 20) -> np.ndarray:
    """An RGB uint8 image with one tiny-pack 'face' (identity = seed) drawn in it."""
    from feval_core.testing.facepack import draw_tiny_face

    img = np.full((size, size, 3), background, dtype=np.uint8)
    box = box or (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    return draw_tiny_face(img, box, seed=seed)


@pytest.fixture(scope="session")
def faces() -> dict[str, np.ndarray]:
    """A few standard test images: faces of two identities, the first again elsewhere, and no face."""
    return {
        "a": face_image(0),
        "a_moved": face_image(0, box=(10, 20, 70, 80)),
        "b": face_image(1),
        "none": np.full((128, 128, 3), 20, dtype=np.uint8),
    }


@pytest.fixture(scope="session")
def learn_task(tmp_path_factory: pytest.TempPathFactory):
    """The synthetic task of feval_core.testing.synthetic (1000 train / 200 held-out images, tiny backbone and face pack),
    built once per session."""
    from feval_core.testing.synthetic import prepare_synthetic_task

    return prepare_synthetic_task(tmp_path_factory.mktemp("learn"))


@pytest.fixture(scope="session")
def learned_run(learn_task):
    """The tiny F-Eval trained on the synthetic task with the default recipe (a TrainResult), once per session."""
    from feval_core.testing.synthetic import synthetic_train_config
    from feval_core.train.loop import train

    return train(synthetic_train_config(learn_task, learn_task.data.parent / "run"))


@pytest.fixture(scope="session")
def tiny_fiqa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight ViT-FIQA model folder (with its tiny face pack), built once per session."""
    from feval_core.testing.fiqa import make_tiny_fiqa

    return make_tiny_fiqa(tmp_path_factory.mktemp("fiqa") / "tiny-fiqa", seed=0)
