"""The vision side: a trainable vision projector and LoRA experts in the vision tower (none / shared /
per_dimension), on every tiny family: scoring, equality with separate passes, training, saving and loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from feval_core.dimensions import DIMENSIONS
from feval_core.model.batching import PassStats
from feval_core.model.config import FaceEncoderConfig, FEvalConfig
from feval_core.model.lmm import FEvalModel
from feval_core.model.rows import Row
from feval_core.testing.tiny import FAMILIES

OPTIONS = ("none", "shared", "per_dimension")


def _model(tiny_ckpts, family: str, option: str) -> FEvalModel:
    cfg = FEvalConfig(base_model=str(tiny_ckpts[family] / "backbone"), mode="trained", num_face_tokens=2, lora_rank=4,
                      lora_alpha=8, vision_experts=option, vision_projector="trained", max_image_pixels=56 * 56,
                      face=FaceEncoderConfig(pack="tiny_face"))
    torch.manual_seed(0)
    model = FEvalModel.build(cfg, random_adapters=True)
    with torch.no_grad():  # random heads so that scores differ between rows
        for p in model.heads.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _rows(faces) -> list[Row]:
    a, b, ref = Image.fromarray(faces["a"]), Image.fromarray(faces["b"]), Image.fromarray(faces["a_moved"])
    return [Row(img, d, prompt="a portrait", ref=ref if d == "identity" else None)
            for img in (a, b) for d in DIMENSIONS]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("option", OPTIONS)
def test_each_option_scores_like_separate_passes_and_shares_vision_where_it_can(tiny_ckpts, faces, family, option):
    model = _model(tiny_ckpts, family, option)
    rows = _rows(faces)
    model.stats = PassStats()
    with torch.no_grad():
        together = model.scores(model.score_rows(rows))
        alone = torch.cat([model.scores(model.score_rows([r], bucket=False)) for r in rows])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=0)
    # tower runs in the batched pass: 2 images + 1 reference, once each unless every dimension has its own expert
    distinct = 3 if option != "per_dimension" else 2 * len(DIMENSIONS) + 1
    assert model.stats.images - 2 * len(DIMENSIONS) - 2 == distinct  # minus the tower runs of the row-by-row passes


@pytest.mark.parametrize("option", ("shared", "per_dimension"))
def test_vision_experts_change_the_scores_and_per_dimension_ones_differ(tiny_ckpts, faces, option):
    model = _model(tiny_ckpts, "qwen2_5_vl", option)
    rows = _rows(faces)
    with torch.no_grad():
        with_experts = model.scores(model.score_rows(rows))
        layers = model._vision_layers()
        assert layers, "no LoRA layer in the vision tower"
        saved = [(m, {k: v.weight.detach().clone() for k, v in m.lora_B.items()}) for m in layers]
        for m, _ in saved:
            for v in m.lora_B.values():
                v.weight.zero_()
        frozen = model.scores(model.score_rows(rows))
        for m, state in saved:
            for k, v in m.lora_B.items():
                v.weight.copy_(state[k])
    assert not torch.allclose(with_experts, frozen, atol=1e-4), "the vision experts do not reach the scores"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("option", OPTIONS)
def test_each_option_trains_saves_and_loads(tiny_ckpts, faces, family, option, tmp_path: Path):
    from feval_core.scoring.scorer import FEvalScorer
    from feval_core.train.data import TrainBatch
    from feval_core.train.steps import TrainStep

    model = _model(tiny_ckpts, family, option)
    rows = _rows(faces)
    named = dict(model.trainable_parameters())
    batch = TrainBatch(rows, [model.prepare_image(im) for im in TrainBatch.images(rows)])
    mos = torch.linspace(10, 90, len(rows))
    out = TrainStep(model)(batch, mos, ["q"] * len(rows), {"levels": 1.0, "regression": 1.0, "router": 0.1})
    out["loss"].backward()
    projector = [p for n, p in named.items() if n.startswith("vision_projector.")]
    assert projector and all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector)
    vision_lora = [p for n, p in named.items() if "lora_B" in n and ("visual" in n or "vision_tower" in n)]
    assert bool(vision_lora) == (option != "none")
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vision_lora)

    scorer = FEvalScorer(model, None)
    folder = scorer.save_pretrained(tmp_path / "ckpt")
    assert (folder / "vision_projector.safetensors").is_file()
    names = {p.name for p in (folder / "adapters").iterdir() if p.is_dir()}
    assert names == set(DIMENSIONS) | {"shared": {"vision"}, "per_dimension": {f"vision_{d}" for d in DIMENSIONS},
                                       "none": set()}[option]
    # unmerged: the exact round trip (merging the shared expert is checked in test_vision_merge.py)
    loaded = FEvalScorer.from_pretrained(folder, device="cpu", face_root=tiny_ckpts[family] / "face_pack",
                                         merge_vision=False)
    with torch.no_grad():
        before = model.scores(model.score_rows(rows))
        after = loaded.model.scores(loaded.model.score_rows(rows))
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)


def test_a_model_with_vision_experts_refuses_the_collated_forward(tiny_ckpts, faces):
    from feval_core.errors import ConfigError

    model = _model(tiny_ckpts, "llava", "shared")
    with pytest.raises(ConfigError, match="vision experts"):
        model(model.collate(_rows(faces)[:1]))


def _tower(model: FEvalModel, prepared) -> torch.Tensor:
    """The tower's features through PEFT's own forward (whatever adapter PEFT has active)."""
    inputs = {k: v for k, v in prepared.pixels.items()}
    pooled = model.base_model.get_image_features(**inputs, return_dict=True).pooler_output
    parts = [pooled] if isinstance(pooled, torch.Tensor) else list(pooled)
    return torch.cat([t.reshape(-1, t.shape[-1]) for t in parts])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("option", ("shared", "per_dimension"))
def test_vision_expert_features_equal_peft_with_that_adapter_active(tiny_ckpts, faces, family, option):
    """An independent reference: PEFT applying one adapter (set_adapter) gives the features our context gives;
    without an expert the tower is the frozen one."""
    from feval_core.model.vision import vision_expert_names

    model = _model(tiny_ckpts, family, option)
    prepared = model.prepare_image(Image.fromarray(faces["a"]))
    with torch.no_grad():
        with model.backbone.disable_adapter():
            frozen = _tower(model, prepared)
        torch.testing.assert_close(model._image_features([prepared], None)[0][0], frozen, atol=1e-6, rtol=0)
        for name in vision_expert_names(option, DIMENSIONS):
            model.backbone.set_adapter(name)
            reference = _tower(model, prepared)
            model.backbone.set_adapter(DIMENSIONS[0])
            ours = model._image_features([prepared], name)[0][0]
            torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
            assert not torch.allclose(ours, frozen, atol=1e-4), f"{name} does not change the tower"
