"""Training learns what the model sees: on the low-level task (quality = blur, noise, JPEG; authenticity =
plastic skin, over-saturation) the tiny model trained with DEFAULT settings beats a linear probe of its own
frozen features and reaches SRCC >= 0.8 on both dimensions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from feval_core.data.manifest import read_manifest
from feval_core.evaluate.metrics import srcc
from feval_core.train.config import DEFAULT_SCHEDULE, DEFAULT_VISION_EXPERTS, TrainConfig

DIMS = ("quality", "authenticity")


@pytest.fixture(scope="session")
def lowlevel_task(tmp_path_factory: pytest.TempPathFactory):
    from feval_core.testing.lowlevel import prepare_lowlevel_task

    return prepare_lowlevel_task(tmp_path_factory.mktemp("lowlevel"))


@pytest.fixture(scope="session")
def lowlevel_run(lowlevel_task):
    """The tiny F-Eval trained on the low-level task with default settings (and the frozen-feature probe)."""
    from feval_core.testing.lowlevel import lowlevel_train_config
    from feval_core.train.loop import train

    return train(lowlevel_train_config(lowlevel_task, lowlevel_task.data.parent / "run", probe=True))


def test_the_run_used_the_defaults(lowlevel_run) -> None:
    cfg = TrainConfig.load(lowlevel_run.out)
    defaults = TrainConfig(manifest="m", base="b", out="o")
    for name in ("lr", "head_lr", "epochs", "batch_size", "schedule", "lora_targets", "vision_experts",
                 "train_vision_projector", "lora_rank", "level_weight", "regression_weight"):
        assert getattr(cfg, name) == getattr(defaults, name), name
    assert cfg.schedule == DEFAULT_SCHEDULE and cfg.vision_experts == DEFAULT_VISION_EXPERTS
    # the default learning rate scales with the LLM's width: 1e-4 x 2048 / 64 for the tiny backbone
    lrs = [r["lr"] for r in lowlevel_run.history if "lr" in r]
    assert cfg.lr is None and max(lrs) == pytest.approx(cfg.learning_rate(64), rel=0.05)
    assert cfg.learning_rate(64) == pytest.approx(3.2e-3)


def test_default_training_learns_low_level_cues_beyond_a_linear_probe(lowlevel_run) -> None:
    untrained = next(h["val"] for h in lowlevel_run.history if h.get("step") == 0 and "val" in h)
    for d in DIMS:
        trained, probe = lowlevel_run.val[d]["srcc"], lowlevel_run.probe[d]
        assert abs(untrained[d]["srcc"]) < 0.5, (d, untrained[d])
        assert trained >= 0.8, (d, trained)
        assert trained >= probe["vision"] and trained >= probe["answer"], (d, trained, probe)
    saved = json.loads((lowlevel_run.out / "probe.json").read_text())
    assert saved.keys() == set(DIMS) and all(saved[d]["n_val"] == 200 for d in DIMS)


def test_the_checkpoint_holds_the_vision_side_and_scores_as_validated(lowlevel_run, lowlevel_task) -> None:
    from feval_core import FEvalScorer

    out = lowlevel_run.out
    assert (out / "vision_projector.safetensors").is_file()
    assert (out / "adapters" / "vision" / "adapter_model.safetensors").is_file()
    scorer = FEvalScorer.from_pretrained(out, device="cpu")
    rows = read_manifest(lowlevel_task.data / "val.jsonl")
    res = scorer.score([str(r.image) for r in rows], dims=DIMS, batch_size=32)
    for j, d in enumerate(("quality", "authenticity")):
        col = res.scores[:, j].numpy()
        assert np.isfinite(col).all()
        assert srcc(col, [r.mos[d] for r in rows]) == pytest.approx(lowlevel_run.val[d]["srcc"], abs=0.02)
