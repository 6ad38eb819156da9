"""A shared vision expert merged into the vision tower for scoring: the same scores and gradients as the unmerged
expert, a plain tower, the LLM's fast expert path kept, and no saving or training of a merged model."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from feval_core.dimensions import DIMENSIONS
from feval_core.errors import ConfigError
from feval_core.model.config import FaceEncoderConfig, FEvalConfig
from feval_core.model.lmm import FEvalModel
from feval_core.model.rows import Row
from feval_core.scoring.scorer import FEvalScorer

FAMILIES = ("qwen2_5_vl", "llava")


def _config(tiny_ckpts, family: str, option: str, **kw) -> FEvalConfig:
    return FEvalConfig(base_model=str(tiny_ckpts[family] / "backbone"), mode="trained", num_face_tokens=2, lora_rank=4,
                       lora_alpha=8, vision_experts=option, vision_projector="trained", max_image_pixels=56 * 56,
                       face=FaceEncoderConfig(pack="tiny_face"), **kw)


def _checkpoint(tiny_ckpts, family: str, option: str, out: Path) -> Path:
    """A saved checkpoint with random (non-zero) experts in the LLM and the vision tower, and random heads."""
    torch.manual_seed(0)
    model = FEvalModel.build(_config(tiny_ckpts, family, option), random_adapters=True)
    with torch.no_grad():
        for p in model.heads.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return FEvalScorer(model, None).save_pretrained(out)


@pytest.fixture(scope="module")
def pairs(tiny_ckpts, tmp_path_factory) -> dict[str, tuple[FEvalScorer, FEvalScorer]]:
    """Per family: (merged, unmerged) scorers of the same shared-vision-expert checkpoint."""
    out = {}
    for family in FAMILIES:
        folder = _checkpoint(tiny_ckpts, family, "shared", tmp_path_factory.mktemp(f"merge_{family}"))
        root = tiny_ckpts[family] / "face_pack"
        out[family] = (FEvalScorer.from_pretrained(folder, device="cpu", face_root=root),
                       FEvalScorer.from_pretrained(folder, device="cpu", face_root=root, merge_vision=False))
    return out


def _rows(faces) -> list[Row]:
    a, b, ref = Image.fromarray(faces["a"]), Image.fromarray(faces["b"]), Image.fromarray(faces["a_moved"])
    return [Row(img, d, prompt="a portrait", ref=ref if d == "identity" else None)
            for img in (a, b) for d in DIMENSIONS]


def _lora_layers(model: FEvalModel, vision: bool) -> list[str]:
    from peft.tuners.lora import LoraLayer

    from feval_core.model.vision import is_vision_module

    return [n for n, m in model.backbone.named_modules() if isinstance(m, LoraLayer) and is_vision_module(n) == vision]


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_and_unmerged_shared_expert_score_alike_with_a_plain_tower(pairs, faces, family):
    merged, unmerged = (s.model for s in pairs[family])
    assert merged.vision_merged and not unmerged.vision_merged
    assert not _lora_layers(merged, vision=True), "the merged tower still has LoRA layers"
    assert _lora_layers(unmerged, vision=True)
    assert _lora_layers(merged, vision=False) == _lora_layers(unmerged, vision=False)  # the LLM's experts stay
    assert "vision" not in merged.backbone.peft_config and "vision" in unmerged.backbone.peft_config
    # the LLM's fast path (each expert on its contiguous rows) still finds plain LoRA layers
    assert merged._expert_layers() is not None and len(merged._expert_layers()) == len(_lora_layers(merged, False))

    prepared = unmerged.prepare_image(Image.fromarray(faces["a"]))
    with torch.no_grad():
        tower_merged = merged._image_features([prepared], "vision")[0][0]
        tower_expert = unmerged._image_features([prepared], "vision")[0][0]
        tower_frozen = unmerged._image_features([prepared], None)[0][0]
    torch.testing.assert_close(tower_merged, tower_expert, atol=1e-5, rtol=0)
    assert not torch.allclose(tower_merged, tower_frozen, atol=1e-3), "the merge lost the expert"

    rows = _rows(faces)
    with torch.no_grad():
        a = merged.scores(merged.score_rows(rows))
        b = unmerged.scores(unmerged.score_rows(rows))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    res_a = pairs[family][0].score([faces["a"], faces["b"]], prompts="a portrait", refs=faces["a_moved"])
    res_b = pairs[family][1].score([faces["a"], faces["b"]], prompts="a portrait", refs=faces["a_moved"])
    torch.testing.assert_close(res_a.scores, res_b.scores, atol=1e-4, rtol=0, equal_nan=True)


def test_differentiable_reward_through_the_merged_tower(pairs, faces):
    from reward import DifferentiableReward

    torch.manual_seed(0)
    images = 0.1 + 0.8 * torch.rand(2, 3, 40, 48)
    values, grads = [], []
    for scorer in pairs["qwen2_5_vl"]:
        x = images.clone().requires_grad_(True)
        scores = DifferentiableReward(scorer).scores(x, prompts="a woman", refs=faces["a"])
        scores.nan_to_num(0.0).sum().backward()
        values.append(scores.detach())
        grads.append(x.grad)
    torch.testing.assert_close(values[0], values[1], atol=1e-4, rtol=0, equal_nan=True)
    assert float(grads[0].abs().sum()) > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-3)


def test_a_merged_model_cannot_be_saved_or_trained(pairs, tmp_path):
    merged, unmerged = pairs["qwen2_5_vl"]
    with pytest.raises(ConfigError, match="merge_vision=False"):
        merged.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists(), "a refused save must not leave a partial folder"
    with pytest.raises(ConfigError, match="merge_vision=False"):
        dict(merged.model.trainable_parameters())
    assert any("lora_B.vision." in n for n in dict(unmerged.model.trainable_parameters()))
    for p in unmerged.model.parameters():
        p.requires_grad_(False)
    folder = unmerged.save_pretrained(tmp_path / "again")  # unmerged: saved whole
    assert (folder / "adapters" / "vision" / "adapter_model.safetensors").is_file()


def test_per_dimension_experts_are_never_merged(tiny_ckpts, faces, tmp_path):
    folder = _checkpoint(tiny_ckpts, "qwen2_5_vl", "per_dimension", tmp_path / "ckpt")
    root = tiny_ckpts["qwen2_5_vl"] / "face_pack"
    scorer = FEvalScorer.from_pretrained(folder, device="cpu", face_root=root)  # merge_vision defaults to True
    assert not scorer.model.vision_merged and not scorer.model.merge_vision_expert()
    assert len({n.split(".lora_A.")[-1].split(".")[0] for n, _ in scorer.model.backbone.named_parameters()
                if ".lora_A.vision_" in n}) == len(DIMENSIONS)


def test_a_vision_expert_sharing_layers_with_llm_experts_stays_unmerged(tiny_ckpts, faces, caplog):
    cfg = _config(tiny_ckpts, "qwen2_5_vl", "shared")
    cfg.vision_lora_target_modules = cfg.lora_target_modules  # the "vision" expert lands on the LLM's FFN
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="feval_core.model.lmm"):
        model = FEvalModel.build(cfg, random_adapters=True, merge_vision=True)
    assert not model.vision_merged
    assert any("unmerged" in r.getMessage() and "merge_vision=False" in r.getMessage() for r in caplog.records)
    assert "vision" in model.backbone.peft_config


def test_video_scorer_merges_its_vision_expert(tmp_path):
    from feval_core.testing.video import make_tiny_video_checkpoint
    from feval_core.video.checkpoint import build_video_model, load_encoders, save_video_checkpoint
    from feval_core.video.config import VideoConfig
    from feval_core.video.scorer import VideoScorer

    folder = make_tiny_video_checkpoint(tmp_path / "video")
    config, vconfig = FEvalConfig.load(folder), VideoConfig.load(folder)
    config.vision_experts = "shared"
    temporal, portrait = load_encoders(vconfig, folder)
    torch.manual_seed(1)
    model = build_video_model(config, vconfig, temporal, portrait, base_dir=folder, random_adapters=True)
    save_video_checkpoint(model, folder)  # the same checkpoint, now with a (random) vision expert

    merged = VideoScorer.from_pretrained(folder, workers=0)
    unmerged = VideoScorer.from_pretrained(folder, workers=0, merge_vision=False)
    assert merged.model.vision_merged and not unmerged.model.vision_merged
    clips = sorted(str(p) for p in (folder / "samples").iterdir())
    a, b = merged.score(clips), unmerged.score(clips)
    assert [r["error"] for r in a] == [r["error"] for r in b]
    got = [(r["video_quality"], s["video_quality"]) for r, s in zip(a, b) if r["video_quality"] is not None]
    assert got and all(abs(x - y) < 1e-3 for x, y in got), got  # rows are rounded to 4 decimals
    with pytest.raises(ConfigError, match="merge_vision=False"):
        save_video_checkpoint(merged.model, tmp_path / "out")
