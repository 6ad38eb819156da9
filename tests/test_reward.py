"""``feval_reward`` and its Flow-GRPO / DDPO shapes: weights, NaN rules, input layouts, the default scorer."""

from __future__ import annotations

import logging
import math
import threading
from concurrent.futures import Future

import numpy as np
import pytest
import torch
from PIL import Image

from feval_core import DIMENSIONS
from reward import (
    MODEL_ENV,
    ReasonLog,
    ddpo_prompt_fn,
    ddpo_reward,
    feval_reward,
    flow_grpo_reward,
    get_scorer,
    resolve_weights,
    weighted_reward,
)

NAN = float("nan")
ID = DIMENSIONS.index("identity")


@pytest.fixture(scope="module")
def batch(faces) -> torch.Tensor:
    """Three [3, H, W] images in [0, 1] whose values are exact 8-bit levels (so every layout agrees)."""
    arr = np.stack([faces["a"], faces["b"], faces["none"]])  # [B, H, W, 3] uint8
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def _manual(scores: torch.Tensor, w: dict[str, float], nan_reward: float = 0.0) -> list[float]:
    out = []
    for row in scores.tolist():
        pairs = [(w[d], v) for d, v in zip(DIMENSIONS, row) if w[d] > 0 and not math.isnan(v)]
        den = sum(p for p, _ in pairs)
        out.append(sum(p * v for p, v in pairs) / den if den else nan_reward)
    return out


# -- weights and the weighted mean --------------------------------------------------------------
def test_resolve_weights_forms():
    assert resolve_weights(None) == dict.fromkeys(DIMENSIONS, 1.0)
    assert resolve_weights({"quality": 2, "id": 1}) == {"quality": 2.0, "authenticity": 0.0, "identity": 1.0,
                                                         "correspondence": 0.0}
    assert resolve_weights([1, 0, 0, 3])["correspondence"] == 3.0
    with pytest.raises(ValueError, match=">= 0"):
        resolve_weights({"quality": -1})
    with pytest.raises(ValueError, match="at least one"):
        resolve_weights({"quality": 0})
    with pytest.raises(ValueError, match="4 values"):
        resolve_weights([1, 2])
    with pytest.raises(ValueError, match="unknown dimension"):
        resolve_weights({"beauty": 1})


def test_weighted_reward_skips_nan_dimensions_instead_of_counting_zero():
    w = {"quality": 1.0, "authenticity": 1.0, "identity": 2.0, "correspondence": 0.0}
    scores = torch.tensor([[60.0, 80.0, 90.0, 10.0],   # all weighted present: (60 + 80 + 180) / 4
                           [60.0, 80.0, NAN, 10.0],    # identity n/a: (60 + 80) / 2, not (60 + 80 + 0) / 4
                           [NAN, NAN, NAN, 10.0],      # nothing weighted scored -> nan_reward
                           [NAN, 40.0, NAN, NAN]])
    r = weighted_reward(scores, w, nan_reward=-1.0)
    assert r.tolist() == pytest.approx([80.0, 70.0, -1.0, 40.0])
    assert math.isnan(float(weighted_reward(scores, w, nan_reward=NAN)[2]))


def test_weighted_reward_gradient_ignores_nan_entries():
    scores = torch.tensor([[60.0, NAN, 90.0, NAN]], requires_grad=True)
    weighted_reward(scores, dict.fromkeys(DIMENSIONS, 1.0)).sum().backward()
    assert scores.grad.tolist() == [[0.5, 0.0, 0.5, 0.0]]


# -- feval_reward on the tiny scorer --------------------------------------------------------------
def test_reward_is_weighted_mean_of_scores(tiny_scorer, batch, faces):
    w = {"quality": 1.0, "authenticity": 0.5, "identity": 2.0, "correspondence": 1.0}
    out = feval_reward(batch, ["a woman", None, "a man"], refs=faces["a_moved"], weights=w, scorer=tiny_scorer,
                       return_dict=True)
    r = out["reward"]
    assert r.dtype == torch.float32 and r.shape == (3,)
    scores = tiny_scorer.score(batch, prompts=["a woman", None, "a man"], refs=faces["a_moved"]).scores
    assert math.isnan(float(scores[1, 3])), "no prompt -> no correspondence"
    assert math.isnan(float(scores[2, ID])), "the scorer itself leaves identity n/a without a face"
    expected = _manual(scores, w)
    expected[2] = 0.0  # the third image has no face: the floor of the reward
    assert r.tolist() == pytest.approx(expected, abs=1e-4)
    judged = scores.clone()
    judged[2, ID] = 0.0  # a reference was given and the face is gone: identity failed, 0 (not left out)
    for j, d in enumerate(DIMENSIONS):
        torch.testing.assert_close(out[d], judged[:, j], equal_nan=True, atol=1e-4, rtol=0)
    assert out["result"].faces == [1, 1, 0] and out["missing"][2]["identity"] == "no face in the image"
    optional = feval_reward(batch, ["a woman", None, "a man"], refs=faces["a_moved"], weights=w, scorer=tiny_scorer,
                            faces_required=False)
    assert optional.tolist() == pytest.approx(_manual(judged, w), abs=1e-4)


def test_only_weighted_dimensions_are_scored(tiny_scorer, batch):
    out = feval_reward(batch, "a woman", weights={"quality": 1}, scorer=tiny_scorer, return_dict=True)
    assert not torch.isnan(out["quality"]).any()
    for d in ("authenticity", "identity", "correspondence"):
        assert torch.isnan(out[d]).all()
        assert {m[d] for m in out["missing"]} == {"not asked"}
    torch.testing.assert_close(out["reward"][:2], out["quality"][:2])
    assert float(out["reward"][2]) == 0.0 and out["faceless"] == [False, False, True]
    optional = feval_reward(batch, "a woman", weights={"quality": 1}, scorer=tiny_scorer, faces_required=False)
    torch.testing.assert_close(optional, out["quality"])


def test_image_with_no_weighted_score_gets_nan_reward_and_a_warning(tiny_scorer, batch, caplog):
    w = {"identity": 1.0}  # no reference given: identity cannot be scored for any image
    with caplog.at_level(logging.WARNING, logger="reward.core"):
        r = feval_reward(batch, "a woman", weights=w, scorer=tiny_scorer, reason_log=ReasonLog())
    assert r.tolist() == [0.0, 0.0, 0.0]
    assert "2 of 3 images: no weighted dimension (identity) could be scored: reward = nan_reward=0.0" in caplog.text
    assert "3 of 3 images: identity not scored (no reference): left out of the mean" in caplog.text
    assert "1 of 3 images: no face in the image: reward = floor 0.0" in caplog.text
    r = feval_reward(batch, "a woman", weights=w, scorer=tiny_scorer, nan_reward=NAN)
    assert torch.isnan(r[:2]).all() and float(r[2]) == 0.0, "the faceless image gets the floor, not nan_reward"
    assert feval_reward(batch, "a woman", weights=w, scorer=tiny_scorer, nan_reward=-5.0).tolist() == [-5.0, -5.0, 0.0]
    r = feval_reward(batch, "a woman", weights=w, scorer=tiny_scorer, nan_reward=NAN, faces_required=False)
    assert torch.isnan(r).all(), "no reference: identity is not asked for, the faceless image is not punished for it"


def test_unreadable_image_gets_nan_reward_the_rest_still_score(tiny_scorer, faces, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    r = feval_reward([faces["a"], str(bad)], "a woman", scorer=tiny_scorer, nan_reward=NAN)
    assert math.isfinite(float(r[0])) and math.isnan(float(r[1]))


PROMPTS = ["a woman", "a man", "a cat"]


@pytest.fixture(scope="module")
def bchw_rewards(tiny_scorer, batch) -> torch.Tensor:
    return feval_reward(batch, PROMPTS, scorer=tiny_scorer)


@pytest.mark.parametrize("layout", ["bhwc", "numpy_bhwc", "numpy_uint8", "pil_list", "chw_list"])
def test_input_layouts_give_the_same_rewards(tiny_scorer, batch, bchw_rewards, layout):
    u8 = (batch * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    images = {
        "bhwc": batch.permute(0, 2, 3, 1),
        "numpy_bhwc": batch.permute(0, 2, 3, 1).numpy(),
        "numpy_uint8": u8,
        "pil_list": [Image.fromarray(a) for a in u8],
        "chw_list": list(batch),
    }[layout]
    torch.testing.assert_close(feval_reward(images, PROMPTS, scorer=tiny_scorer), bchw_rewards)


def test_refs_one_per_image_or_one_for_all(tiny_scorer, batch, faces):
    w = {"identity": 1.0}
    one = feval_reward(batch, refs=faces["a"], weights=w, scorer=tiny_scorer, nan_reward=NAN)
    per = feval_reward(batch, refs=[faces["a"], faces["b"], faces["a"]], weights=w, scorer=tiny_scorer, nan_reward=NAN)
    assert float(one[0]) == pytest.approx(float(per[0]), abs=1e-4)
    assert float(one[1]) != pytest.approx(float(per[1]), abs=1e-3), "image 1's own reference changes its identity"
    with pytest.raises(ValueError, match="one ref per image"):
        feval_reward(batch, refs=[faces["a"], faces["b"]], weights=w, scorer=tiny_scorer)


def test_reward_follows_the_images_device(tiny_scorer, batch):
    assert feval_reward(batch, "a", scorer=tiny_scorer).device == batch.device
    assert feval_reward(list(batch.permute(0, 2, 3, 1).numpy()), "a", scorer=tiny_scorer).device.type == "cpu"


def test_default_scorer_from_environment_is_loaded_once(tiny_ckpt, batch, monkeypatch):
    monkeypatch.delenv(MODEL_ENV, raising=False)
    with pytest.raises(RuntimeError, match=MODEL_ENV):
        feval_reward(batch, "a woman")
    monkeypatch.setenv(MODEL_ENV, str(tiny_ckpt))
    monkeypatch.setenv("FEVAL_REWARD_DEVICE", "cpu")
    first = get_scorer()
    assert get_scorer() is first
    assert get_scorer(str(tiny_ckpt), device="cpu") is first
    r = feval_reward(batch[:1], "a woman")
    assert r.shape == (1,) and math.isfinite(float(r[0]))


def test_scorer_is_shared_safely_between_threads(tiny_scorer, batch):
    expected = feval_reward(batch, "a woman", scorer=tiny_scorer)
    results: list[torch.Tensor] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(feval_reward(batch, "a woman", scorer=tiny_scorer))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results:
        torch.testing.assert_close(r, expected)


# -- Flow-GRPO ----------------------------------------------------------------------------------
def test_flow_grpo_reward_shape_scale_and_refs(tiny_scorer, batch, faces):
    w = {"quality": 1.0, "identity": 1.0}
    fn = flow_grpo_reward(tiny_scorer, w)
    prompts = ["a woman", "a man", "a cat"]
    scores, meta = fn(batch, prompts, [{}, {}, {}], only_strict=True)
    assert set(meta) == {"faces", "warnings", "missing"} and meta["faces"] == [1, 1, 0]
    assert meta["missing"] == [{"identity": "no reference"}] * 3
    assert set(scores) == {"quality", "identity", "avg"}
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 and v.shape == (3,) for v in scores.values())
    assert (scores["identity"] == 0).all(), "no reference anywhere: identity applies to none, filled with 0 (not NaN)"
    np.testing.assert_allclose(scores["avg"][:2], scores["quality"][:2], atol=1e-6)
    assert scores["avg"][2] == 0.0, "no face: the floor"
    expected = feval_reward(batch, prompts, refs=faces["a"], weights=w, scorer=tiny_scorer).numpy() / 100
    via_arg, _ = fn(batch, prompts, [{}, {}, {}], ref_images=faces["a"])
    via_meta, _ = fn(batch, prompts, [{"ref": faces["a"]}] * 3)
    np.testing.assert_allclose(via_arg["avg"], expected, atol=1e-6)
    np.testing.assert_allclose(via_meta["avg"], expected, atol=1e-6)
    assert np.isfinite(via_arg["identity"][:2]).all()
    assert via_arg["identity"][2] == 0.0, "the third image lost the face next to a reference: identity 0"
    assert via_arg["avg"][2] == 0.0


# -- DDPO (the trainer itself runs in test_reward_pipelines.py) -----------------------------------
def test_ddpo_reward_sync_and_async_agree(tiny_scorer, batch, faces):
    prompts = ("a woman", "a man", "a cat")
    meta = ({"ref": faces["a"]}, {"ref": None}, {})
    sync = ddpo_reward(tiny_scorer)
    r, m = sync(batch, prompts, meta)
    assert isinstance(r, torch.Tensor) and r.shape == (3,)
    assert math.isfinite(float(m["identity"][0])) and math.isnan(float(m["identity"][1]))
    assert m["faces"] == [1, 1, 0]
    asyn = ddpo_reward(tiny_scorer, async_reward_computation=True)
    try:
        fr, fm = asyn(batch, prompts, meta)
        assert isinstance(fr, Future) and isinstance(fm, Future)
        torch.testing.assert_close(fr.result(timeout=60), r)
        torch.testing.assert_close(fm.result(timeout=60)["quality"], m["quality"])
        bad_r, bad_m = asyn(batch, prompts[:2], meta)  # mismatched lengths: the error arrives through the futures
        with pytest.raises(ValueError, match="3 images|prompt"):
            bad_r.result(timeout=60)
        with pytest.raises(ValueError):
            bad_m.result(timeout=60)
    finally:
        asyn.close()


def test_ddpo_prompt_fn_carries_the_reference():
    fn = ddpo_prompt_fn(["p0", "p1", "p2"], refs=["r0", "r1", "r2"], seed=3)
    seen = [fn() for _ in range(20)]
    assert all(meta["ref"] == "r" + prompt[1] for prompt, meta in seen)
    assert len({p for p, _ in seen}) > 1
    one = ddpo_prompt_fn(["p0", "p1"], refs="me.jpg")
    assert one()[1] == {"ref": "me.jpg"}
    with pytest.raises(ValueError, match="one ref per prompt"):
        ddpo_prompt_fn(["p0", "p1"], refs=["a", "b", "c"])
