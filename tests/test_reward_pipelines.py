"""Rewards driving a real (tiny) diffusers pipeline: best-of-N, Diffusion-DPO pairs, trl's DDPOTrainer."""

from __future__ import annotations

import io
import math
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reward import (
    BestOfN,
    best_of_n,
    build_dpo_pairs,
    ddpo_prompt_fn,
    ddpo_reward,
    feval_reward,
    regenerate,
)

STEPS = {"num_inference_steps": 2, "guidance_scale": 2.0}


@pytest.fixture(scope="session")
def tiny_pipe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from reward.tiny import make_tiny_pipeline

    return make_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd") / "pipe", seed=0)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_pipe_dir: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_pipe_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- best-of-N -------------------------------------------------------------------------------------
def test_best_of_n_end_to_end_and_the_winner_regenerates_from_its_seed(tiny_pipe, tiny_scorer):
    prompt = "a face photo"
    res = best_of_n(tiny_pipe, prompt, n=5, k=2, seed=100, scorer=tiny_scorer, batch_size=2, output_type="pt", **STEPS)
    assert isinstance(res, BestOfN)
    assert res.all_seeds == [100, 101, 102, 103, 104]
    assert res.all_rewards.shape == (5,) and res.all_scores.shape == (5, 4)
    assert torch.isfinite(res.all_rewards).all()
    top = torch.sort(res.all_rewards, descending=True).values[:2].tolist()
    assert res.rewards == pytest.approx(top)
    assert res.seeds == [res.all_seeds[i] for i in res.indices]
    assert len(res.images) == 2 and res.images[0].shape == (3, 32, 32)
    assert len(res.records()) == 5 and res.records()[res.indices[0]]["reward"] == pytest.approx(res.rewards[0])

    again = regenerate(tiny_pipe, prompt, res.seeds[0], output_type="pt", **STEPS)
    torch.testing.assert_close(again, res.images[0], atol=1e-4, rtol=0)
    r = feval_reward(again.unsqueeze(0), prompt, scorer=tiny_scorer)
    assert float(r[0]) == pytest.approx(res.rewards[0], abs=0.05)


def test_best_of_n_with_given_seeds_and_pil_output(tiny_pipe, tiny_scorer):
    res = best_of_n(tiny_pipe, "a face photo", n=3, seed=[7, 70, 700], scorer=tiny_scorer, batch_size=3, **STEPS)
    assert res.all_seeds == [7, 70, 700]
    assert isinstance(res.images[0], Image.Image) and res.images[0].size == (32, 32)
    assert res.rewards[0] == pytest.approx(float(res.all_rewards.max()))


def test_best_of_n_refuses_arguments_it_sets_itself(tiny_pipe, tiny_scorer):
    with pytest.raises(ValueError, match="generator"):
        best_of_n(tiny_pipe, "a face", n=2, scorer=tiny_scorer, generator=torch.Generator(), **STEPS)
    with pytest.raises(ValueError, match="k <= n"):
        best_of_n(tiny_pipe, "a face", n=2, k=3, scorer=tiny_scorer)
    with pytest.raises(ValueError, match="one seed per candidate"):
        best_of_n(tiny_pipe, "a face", n=2, seed=[1], scorer=tiny_scorer)


# -- Diffusion-DPO pairs ---------------------------------------------------------------------------
def test_dpo_pairs_load_with_datasets_and_labels_point_at_the_better_image(tiny_pipe, tiny_scorer, tmp_path):
    from datasets import load_dataset

    prompts = ["a face photo", "a smiling face"]
    res = build_dpo_pairs(tiny_pipe, prompts, tmp_path / "pairs", n=3, margin=0.0, seed=5, scorer=tiny_scorer,
                          **STEPS)
    assert res.num_pairs == 2 and not res.skipped
    ds = load_dataset(str(res.path), split="train", cache_dir=str(tmp_path / "hf_cache"))
    assert len(ds) == 2
    assert {"jpg_0", "jpg_1", "label_0", "caption"} <= set(ds.column_names)
    assert ds["caption"] == prompts
    for row in ds:
        im0 = Image.open(io.BytesIO(row["jpg_0"])).convert("RGB")
        im1 = Image.open(io.BytesIO(row["jpg_1"])).convert("RGB")
        r0, r1 = feval_reward([im0, im1], row["caption"], scorer=tiny_scorer).tolist()
        assert (r0, r1) == pytest.approx((row["reward_0"], row["reward_1"]), abs=1e-3), "stored images are the scored ones"
        assert row["label_0"] in (0.0, 1.0)
        assert (r0 > r1) == (row["label_0"] == 1.0)
        assert row["seed_0"] != row["seed_1"] and row["seed_0"] >= 5
    # the pair's images regenerate from their seeds
    first = ds[0]
    again = regenerate(tiny_pipe, first["caption"], first["seed_0"], output_type="np", **STEPS)
    stored = np.asarray(Image.open(io.BytesIO(first["jpg_0"])).convert("RGB"), dtype=np.float32) / 255
    assert np.abs(again - stored).max() <= 1 / 255 + 1e-4


def test_dpo_pairs_margin_and_unscorable_candidates(tiny_scorer, faces, tmp_path):
    cands = [[faces["a"], faces["b"], faces["none"]], [faces["a"], faces["b"]]]
    wide = build_dpo_pairs(cands, ["p0", "p1"], tmp_path / "wide", margin=1000.0, scorer=tiny_scorer)
    assert wide.num_pairs == 0 and [p for p, _ in wide.skipped] == ["p0", "p1"]
    assert "margin" in wide.skipped[0][1]
    unscorable = build_dpo_pairs(cands, ["p0", "p1"], tmp_path / "nan", weights={"identity": 1}, scorer=tiny_scorer)
    assert unscorable.num_pairs == 0 and "could be scored" in unscorable.skipped[0][1]
    given = build_dpo_pairs(cands, ["p0", "p1"], tmp_path / "given", margin=0.0, refs=faces["a"], scorer=tiny_scorer)
    assert given.num_pairs == 2
    from datasets import load_dataset

    ds = load_dataset(str(given.path), split="train", cache_dir=str(tmp_path / "hf_cache"))
    assert ds["seed_0"] == [-1, -1]


# -- trl DDPOTrainer (trl 0.23.1) -------------------------------------------------------------------
@pytest.mark.parametrize("async_mode", [False, True], ids=["sync", "async"])
def test_ddpo_trainer_trains_a_step_with_ddpo_reward(tiny_pipe_dir, tiny_scorer, faces, tmp_path, async_mode):
    import accelerate
    from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline

    accelerate.PartialState()  # DefaultDDPOStableDiffusionPipeline needs the accelerate state first
    pipeline = DefaultDDPOStableDiffusionPipeline(str(tiny_pipe_dir), use_lora=True)
    config = DDPOConfig(
        num_epochs=1, sample_num_steps=2, sample_batch_size=2, sample_num_batches_per_epoch=1, train_batch_size=2,
        train_gradient_accumulation_steps=1, train_timestep_fraction=1.0, sample_guidance_scale=2.0,
        mixed_precision="no", log_with=None, save_freq=1000, async_reward_computation=async_mode, max_workers=1,
        project_kwargs={"project_dir": str(tmp_path / "ddpo")},
    )
    reward_fn = ddpo_reward(tiny_scorer, {"quality": 1, "identity": 1}, async_reward_computation=async_mode)
    calls: list[tuple] = []

    def spy(images, prompts, prompt_metadata):
        out = reward_fn(images, prompts, prompt_metadata)
        calls.append((tuple(images.shape), prompts, prompt_metadata, out))
        return out

    trainer = DDPOTrainer(config, spy, ddpo_prompt_fn(["a face photo", "a smiling face"], refs=faces["a"]), pipeline)
    lora = {n: p.detach().clone() for n, p in pipeline.unet.named_parameters() if p.requires_grad}
    assert lora, "LoRA layers must be trainable"
    try:
        assert trainer.step(0, 0) == 1
    finally:
        reward_fn.close()
    assert len(calls) == 1
    shape, prompts, metadata, out = calls[0]
    assert shape == (2, 3, 32, 32) and len(prompts) == 2
    assert all(m["ref"] is faces["a"] for m in metadata)
    if async_mode:
        assert all(isinstance(f, Future) and f.done() for f in out)
        rewards, meta = out[0].result(), out[1].result()
    else:
        rewards, meta = out
    assert rewards.shape == (2,) and torch.isfinite(rewards).all()
    assert torch.isfinite(meta["identity"]).all(), "the reference from prompt_metadata reached the scorer"
    changed = sum(not torch.equal(lora[n], p.detach()) for n, p in pipeline.unet.named_parameters() if n in lora)
    assert changed > 0
    assert all(math.isfinite(float(p.detach().abs().sum())) for n, p in pipeline.unet.named_parameters() if n in lora)
