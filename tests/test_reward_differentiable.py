"""The differentiable reward path: torch preprocessing == the processors, gradients that are real."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from PIL import Image

from feval_core import DIMENSIONS, FEvalScorer
from feval_core.faces.align import aligned_face_crops
from feval_core.model.backbone import load_processor
from feval_core.model.preprocess import pixel_values_from_tensors, supports_processor
from reward import DifferentiableReward, differentiable_dims, differentiable_reward

SIZES = [(32, 32), (56, 56), (57, 123), (300, 200)]


def _smooth_image(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = (rng.random((h // 4 + 1, w // 4 + 1, 3)) * 255).astype(np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BICUBIC)


def _tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _assert_matches_processor(ip, images: list[Image.Image]) -> None:
    ref = ip(images=images, return_tensors="pt")
    ours = pixel_values_from_tensors(ip, [_tensor(im) for im in images])
    assert ours["pixel_values"].shape == ref["pixel_values"].shape
    if "image_grid_thw" in ref:
        assert ours["image_grid_thw"].tolist() == ref["image_grid_thw"].tolist()
    diff = (ours["pixel_values"] - ref["pixel_values"]).abs()
    # PIL rounds each resize pass to 8 bits; one level is 1/255/0.27 ~ 0.0145 after CLIP normalisation
    assert float(diff.mean()) < 6e-3, float(diff.mean())
    assert float(diff.max()) < 6e-2, float(diff.max())


# -- torch preprocessing == the processor ------------------------------------------------------------
@pytest.mark.parametrize("family", ["qwen2_5_vl", "internvl", "llava"])
def test_torch_preprocessing_matches_the_backbone_processor(tiny_ckpts, family):
    ip = load_processor(tiny_ckpts[family] / "backbone").image_processor
    assert supports_processor(ip)
    _assert_matches_processor(ip, [_smooth_image(h, w, i) for i, (h, w) in enumerate(SIZES)])


def test_torch_preprocessing_matches_processor_configurations_beyond_the_tiny_ones():
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
        GotOcr2ImageProcessorPil,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )
    from transformers.models.siglip.image_processing_pil_siglip import (
        SiglipImageProcessorPil,
    )

    images = [_smooth_image(90, 150, 1), _smooth_image(150, 60, 2), _smooth_image(40, 40, 3)]
    # InternVL's tiling (several tiles + thumbnail), Qwen2-VL at a larger pixel budget, SigLIP fixed size
    for ip in (GotOcr2ImageProcessorPil(size={"height": 28, "width": 28}, crop_to_patches=True, max_patches=6),
               Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 64),
               SiglipImageProcessorPil(size={"height": 32, "width": 32})):
        _assert_matches_processor(ip, images)


def test_exact_size_images_pass_through_unresampled(tiny_ckpt):
    ip = load_processor(tiny_ckpt / "backbone").image_processor
    img = _smooth_image(56, 56, 0)
    ours = pixel_values_from_tensors(ip, _tensor(img).unsqueeze(0))["pixel_values"]
    torch.testing.assert_close(ours, ip(images=[img], return_tensors="pt")["pixel_values"], atol=1e-5, rtol=0)


def test_unsupported_inputs_and_processors_are_refused(tiny_ckpt):
    ip = load_processor(tiny_ckpt / "backbone").image_processor
    with pytest.raises(ValueError, match="float"):
        pixel_values_from_tensors(ip, [torch.zeros(3, 8, 8, dtype=torch.uint8)])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        pixel_values_from_tensors(ip, torch.zeros(2, 8, 8, 3))
    assert not supports_processor(types.SimpleNamespace(size={}))
    anyres = types.SimpleNamespace(size={"shortest_edge": 336}, image_grid_pinpoints=[[336, 672]])
    assert not supports_processor(anyres)


# -- the differentiable reward (trained tiny checkpoint) ---------------------------------------------
@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    torch.manual_seed(0)
    return 0.1 + 0.8 * torch.rand(2, 3, 40, 48)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "internvl", "llava"])
def test_differentiable_scores_agree_with_the_scorer(tiny_ckpts, tiny_scorer, images, faces, family):
    scorer = tiny_scorer if family == "qwen2_5_vl" else FEvalScorer.from_pretrained(tiny_ckpts[family], device="cpu")
    kw = {"prompts": ["a woman", "a man"], "refs": faces["a"]}
    x = images.clone().requires_grad_(True)
    ours = DifferentiableReward(scorer).scores(x, **kw)
    expected = scorer.score(images, **kw).scores
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours.detach(), expected, atol=0.5, rtol=0)  # the scorer's input is rounded to 8 bits
    ours.sum().backward()
    assert torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0


def test_backward_gives_finite_nonzero_gradients_for_every_dimension(tiny_scorer, images, faces):
    assert differentiable_dims(tiny_scorer) == DIMENSIONS
    reward = DifferentiableReward(tiny_scorer)
    for d in DIMENSIONS:
        x = images.clone().requires_grad_(True)
        scores = reward.scores(x, prompts="a woman", refs=faces["a"])
        scores[:, DIMENSIONS.index(d)].sum().backward()
        assert torch.isfinite(x.grad).all(), d
        assert float(x.grad.abs().sum()) > 0, f"{d} must carry gradients to the pixels"
    x = images.clone().requires_grad_(True)
    r = differentiable_reward(x, "a woman", refs=faces["a"], scorer=tiny_scorer)
    assert r.shape == (2,) and r.requires_grad
    r.sum().backward()
    assert torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0


def test_gradient_matches_finite_differences(tiny_scorer, images):
    reward = DifferentiableReward(tiny_scorer, {"quality": 1, "authenticity": 1, "correspondence": 1})
    x = images.double().clone().requires_grad_(True)
    # detections are piecewise constant in the pixels: hold them fixed, as the gradient does
    found = reward.detect_faces(x)
    assert [f.num_faces for f in found] == [1, 1]

    def total(t: torch.Tensor) -> torch.Tensor:
        return reward(t, "a woman", faces=found).sum()

    total(x).backward()
    grad = x.grad.flatten()
    eps = 1e-2
    for idx in grad.abs().topk(3).indices.tolist():
        plus, minus = x.detach().clone().flatten(), x.detach().clone().flatten()
        plus[idx] += eps
        minus[idx] -= eps
        with torch.no_grad():
            fd = (total(plus.view_as(x)) - total(minus.view_as(x))) / (2 * eps)
        assert float(fd) == pytest.approx(float(grad[idx]), rel=0.02), idx


def test_nan_dimensions_are_skipped_and_all_nan_gets_nan_reward(tiny_scorer, images):
    reward = DifferentiableReward(tiny_scorer, {"quality": 1, "identity": 1}, nan_reward=-1.0)
    x = images.clone().requires_grad_(True)
    scores = reward.scores(x)
    assert torch.isnan(scores[:, 2]).all()  # no reference -> identity not scored
    torch.testing.assert_close(reward(x), scores[:, 0])  # so the reward is the quality score alone
    only_id = DifferentiableReward(tiny_scorer, {"identity": 1}, nan_reward=-1.0)
    assert only_id(x).tolist() == [-1.0, -1.0]


def test_channels_last_input_and_bad_input(tiny_scorer, images):
    reward = DifferentiableReward(tiny_scorer, {"quality": 1})
    torch.testing.assert_close(reward(images.permute(0, 2, 3, 1)), reward(images))
    with pytest.raises(TypeError, match=r"\[B, 3, H, W\]"):
        reward([images[0]])


# -- zero-shot identity and differentiable face crops ---------------------------------------------
@pytest.fixture(scope="module")
def zero_shot(tiny_ckpt) -> FEvalScorer:
    return FEvalScorer.zero_shot(str(tiny_ckpt / "backbone"), face_pack="tiny_face", face_root=tiny_ckpt / "face_pack",
                                 device="cpu")


def _face_batch(faces) -> torch.Tensor:
    arr = np.stack([faces["a"], faces["b"]])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def test_zero_shot_identity_has_its_value_but_no_gradient(zero_shot, faces):
    assert differentiable_dims(zero_shot) == ("quality", "authenticity", "correspondence")
    x = _face_batch(faces).requires_grad_(True)
    scores = DifferentiableReward(zero_shot).scores(x, refs=faces["a_moved"])
    expected = zero_shot.score(x.detach(), refs=faces["a_moved"]).scores
    torch.testing.assert_close(scores[:, 2].detach(), expected[:, 2], atol=1e-3, rtol=0)  # ArcFace cosine value
    (g_identity,) = torch.autograd.grad(scores[:, 2].sum(), x, retain_graph=True, allow_unused=True)
    assert g_identity is None or float(g_identity.abs().sum()) == 0.0
    (g_quality,) = torch.autograd.grad(scores[:, 0].sum(), x)
    assert float(g_quality.abs().sum()) > 0


def test_face_embedder_makes_zero_shot_identity_differentiable(zero_shot, faces):
    torch.manual_seed(0)
    embedder = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, 16))
    assert "identity" in differentiable_dims(zero_shot, embedder)
    x = _face_batch(faces).requires_grad_(True)
    reward = DifferentiableReward(zero_shot, {"identity": 1}, face_embedder=embedder, nan_reward=float("nan"))
    r = reward(x, refs=faces["a_moved"])
    assert torch.isfinite(r).all()
    r.sum().backward()
    assert torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0


def test_face_embedder_must_match_the_projector_in_trained_mode(tiny_scorer, faces):
    embedder = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, 16))
    reward = DifferentiableReward(tiny_scorer, {"quality": 1}, face_embedder=embedder)
    with pytest.raises(ValueError, match="512"):
        reward(_face_batch(faces))


def test_aligned_face_crops_match_insightface_norm_crop_and_carry_gradients(tiny_scorer, faces):
    info = tiny_scorer.face_encoder.analyze(faces["a_moved"])
    assert info.num_faces == 1
    x = (torch.from_numpy(faces["a_moved"]).permute(2, 0, 1).float() / 255.0).unsqueeze(0).requires_grad_(True)
    crops = aligned_face_crops(torch.cat([x, x]), [info.kps, None])
    assert crops.shape == (2, 3, 112, 112)
    ref = torch.from_numpy(info.crop).permute(2, 0, 1).float() / 255.0
    diff = (crops[0].detach() - ref).abs()
    assert float(diff.mean()) < 2 / 255 and float(diff.max()) < 0.1
    assert float(crops[1].detach().abs().sum()) == 0.0, "no key points -> empty crop"
    crops.sum().backward()
    assert float(x.grad.abs().sum()) > 0
