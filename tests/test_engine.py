"""The F-Eval engine on tiny real-class backbones: scoring, per-row experts, checkpoints, NaN rules."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from feval_core import DIMENSIONS, FEvalScorer
from feval_core.errors import CheckpointError, ConfigError

FAMILIES = ["qwen2_5_vl", "internvl", "llava"]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_scores_all_four_dimensions(tiny_ckpts, faces, family):
    scorer = FEvalScorer.from_pretrained(tiny_ckpts[family], device="cpu")
    res = scorer.score([faces["a"], faces["b"]], prompts="a portrait of a woman", refs=faces["a_moved"])
    assert res.scores.dtype == torch.float32 and res.scores.shape == (2, 4)
    assert torch.isfinite(res.scores).all()
    assert ((res.scores >= 0) & (res.scores <= 100)).all()
    assert res.scores[0].tolist() != res.scores[1].tolist(), "different images must get different scores"
    recs = res.to_records()
    assert [r["faces"] for r in recs] == [1, 1]
    assert all(r["error"] is None for r in recs)
    assert set(DIMENSIONS) <= set(recs[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_dimensions_equal_separate_passes(tiny_ckpts, faces, family):
    scorer = FEvalScorer.from_pretrained(tiny_ckpts[family], device="cpu")
    imgs = [faces["a"], faces["b"], faces["none"]]
    kw = dict(prompts=["a woman", "an old man with a beard and glasses", "a cat"], refs=faces["a_moved"])
    together = scorer.score(imgs, **kw).scores
    assert torch.isfinite(together[:2]).all() and torch.isfinite(together[2, [0, 1, 3]]).all()
    assert math.isnan(together[2, 2]), "identity of an image without a face is not applicable"
    for j, d in enumerate(DIMENSIONS):
        alone = scorer.score(imgs, dims=[d], **kw).scores
        torch.testing.assert_close(alone[:, j], together[:, j], atol=1e-4, rtol=0, equal_nan=True)
        others = [k for k in range(4) if k != j]
        assert torch.isnan(alone[:, others]).all()
    # batch size must not change a score either (padding differs)
    one_by_one = scorer.score(imgs, batch_size=1, **kw).scores
    torch.testing.assert_close(one_by_one, together, atol=1e-4, rtol=0, equal_nan=True)


def test_experts_are_distinct_per_dimension(tiny_scorer, faces):
    """Same image, same text except the dimension: the per-row expert must change the hidden state."""
    from feval_core.model.rows import Row

    m = tiny_scorer.model
    rows = [Row(Image.fromarray(faces["a"]), "quality"), Row(Image.fromarray(faces["a"]), "quality")]
    with torch.no_grad():
        b = m.collate(rows)
        same = m(b).hidden
        b.dims = ["quality", "authenticity"]
        mixed = m(b).hidden
    torch.testing.assert_close(same[0], same[1])
    torch.testing.assert_close(mixed[0], same[0])
    assert not torch.allclose(mixed[1], same[1]), "authenticity expert gave the quality expert's output"


def test_missing_prompt_and_reference_give_nan(tiny_scorer, faces):
    res = tiny_scorer.score([faces["a"], faces["b"]], prompts=["a woman", None])
    q, a, i, c = (DIMENSIONS.index(d) for d in ("quality", "authenticity", "identity", "correspondence"))
    assert torch.isnan(res.scores[:, i]).all(), "identity without a reference must be NaN"
    assert not math.isnan(res.scores[0, c]) and math.isnan(res.scores[1, c])
    assert torch.isfinite(res.scores[:, [q, a]]).all()
    rec = res.to_records()[1]
    assert rec["identity"] is None and rec["correspondence"] is None
    json.dumps(res.to_records(), allow_nan=False)  # records are strict JSON


def test_empty_prompt_counts_as_missing(tiny_scorer, faces):
    res = tiny_scorer.score([faces["a"]], prompts="   ")
    assert math.isnan(res.scores[0, DIMENSIONS.index("correspondence")])


def test_face_tokens_change_the_score(tiny_scorer, faces):
    """The facial projector is wired in: a different face embedding changes the hidden state."""
    from feval_core.model.rows import Row

    m = tiny_scorer.model
    img = Image.fromarray(faces["a"])
    rng = np.random.default_rng(0)
    rows = [Row(img, "quality", face=None), Row(img, "quality", face=rng.normal(size=512).astype(np.float32))]
    with torch.no_grad():
        h = m(m.collate(rows)).hidden
    assert not torch.allclose(h[0], h[1])


def test_save_load_roundtrip_identical(tiny_scorer, faces, tmp_path):
    imgs = [faces["a"], faces["b"]]
    kw = dict(prompts="a woman", refs=faces["a_moved"])
    before = tiny_scorer.score(imgs, **kw).scores
    out = tiny_scorer.save_pretrained(tmp_path / "copy")
    assert (out / "feval_config.json").is_file() and (out / "projectors.safetensors").is_file()
    for d in DIMENSIONS:
        assert (out / "adapters" / d / "adapter_model.safetensors").is_file()
        assert (out / "adapters" / d / "adapter_config.json").is_file()
    assert (out / "backbone" / "model.safetensors").is_file(), "in-checkpoint backbone must be copied along"
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))
    again = FEvalScorer.from_pretrained(out, device="cpu").score(imgs, **kw).scores
    assert torch.equal(before, again)


def test_router_learns_nothing_yet_but_has_the_right_shape(tiny_scorer):
    from feval_core.dimensions import EVAL_PROMPTS

    logits = tiny_scorer.model.route([p.format(prompt="x") for p in EVAL_PROMPTS.values()])
    assert logits.shape == (4, 4) and torch.isfinite(logits).all()
    assert set(tiny_scorer.model.routed_dims(["Please give me the quality score."])) <= set(DIMENSIONS)


def test_bad_input_gets_its_own_error_row(tiny_scorer, faces, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")
    good = tmp_path / "good.png"
    Image.fromarray(faces["a"]).save(good)
    res = tiny_scorer.score([str(good), str(bad), str(tmp_path / "missing.jpg"), faces["b"]])
    recs = res.to_records()
    assert recs[0]["error"] is None and recs[3]["error"] is None
    assert recs[1]["error"] and "broken.png" in recs[1]["error"]
    assert recs[2]["error"] and "missing.jpg" in recs[2]["error"]
    assert torch.isnan(res.scores[1]).all() and torch.isfinite(res.scores[0, :2]).all()
    assert recs[1]["quality"] is None and recs[1]["faces"] is None


def test_no_face_image_is_scored_with_a_warning(tiny_scorer, faces):
    rec = tiny_scorer.score([faces["none"]]).to_records()[0]
    assert rec["faces"] == 0 and rec["quality"] is not None
    assert any("no face" in w for w in rec["warnings"])


# -- zero-shot ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def zero_shot(tiny_ckpt):
    return FEvalScorer.zero_shot(str(tiny_ckpt / "backbone"), face_pack="tiny_face",
                                 face_root=tiny_ckpt / "face_pack", device="cpu")


def test_zero_shot_from_a_plain_vlm_folder(tiny_ckpt, faces):
    scorer = FEvalScorer.from_pretrained(tiny_ckpt / "backbone", device="cpu", face_root=tiny_ckpt / "face_pack")
    assert scorer.config.mode == "zero_shot" and scorer.model.heads is None
    res = scorer.score([faces["a"]], prompts="a woman")
    assert torch.isfinite(res.scores[0, [0, 1, 3]]).all()


def test_zero_shot_identity_is_arcface_cosine(zero_shot, faces):
    from feval_core.faces.encoder import FaceEncoder
    from feval_core.faces.identity import arcface_identity_score

    res = zero_shot.score([faces["a"], faces["b"], faces["none"]], refs=faces["a_moved"], dims=["identity"])
    fe = zero_shot.face_encoder
    expected = arcface_identity_score(FaceEncoder.cosine(fe.embed(faces["a"]), fe.embed(faces["a_moved"])))
    assert res.scores[0, 2].item() == pytest.approx(expected, abs=1e-4)
    assert res.scores[0, 2] > res.scores[1, 2], "the same identity must score higher than another"
    assert math.isnan(res.scores[2, 2]) and any("no face" in w for w in res.warnings[2])


def test_zero_shot_reference_without_face_is_nan_with_reason(zero_shot, faces):
    res = zero_shot.score([faces["a"]], refs=faces["none"], dims=["identity"])
    assert math.isnan(res.scores[0, 2])
    assert any("reference" in w for w in res.warnings[0])


def test_zero_shot_levels_are_a_probability_average(zero_shot, faces):
    from feval_core.model.rows import Row

    m = zero_shot.model
    with torch.no_grad():
        out = m(m.collate([Row(Image.fromarray(faces["a"]), "quality")]))
    p = out.level_logits.softmax(-1)[0]
    assert out.level_score.item() == pytest.approx(float(p @ torch.tensor([100, 75, 50, 25, 0.0])), abs=1e-4)


# -- checkpoints and configs -----------------------------------------------------------------------
def test_pickle_in_checkpoint_is_refused(tiny_ckpt, tmp_path):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, ck)
    (ck / "adapters" / "quality" / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(CheckpointError, match="pickle"):
        FEvalScorer.from_pretrained(ck, device="cpu")


@pytest.mark.parametrize("patch, message", [
    ({"mode": "magic"}, "mode must be one of"),
    ({"score_mode": "vibes"}, "score_mode must be one of"),
    ({"dims": ["quality", "beauty"]}, "dims must be"),
    ({"num_face_tokens": 0}, "num_face_tokens"),
    ({"surprise": 1}, "unknown keys"),
    ({"face": {"pack": "../../etc"}}, "plain folder name"),
    ({"format_version": 99}, "Upgrade feval"),
])
def test_config_validation_names_the_problem(tiny_ckpt, tmp_path, patch, message):
    from feval_core.model.config import FEvalConfig

    data = json.loads((tiny_ckpt / "feval_config.json").read_text())
    for k, v in patch.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
    (tmp_path / "feval_config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message):
        FEvalConfig.load(tmp_path)


def test_malformed_and_oversized_configs_are_refused(tmp_path):
    from feval_core.model.config import FEvalConfig

    (tmp_path / "feval_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        FEvalConfig.load(tmp_path)
    (tmp_path / "feval_config.json").write_text(json.dumps({"base_model": "x", "pad": "a" * 300_000}))
    with pytest.raises(ConfigError, match="Refusing"):
        FEvalConfig.load(tmp_path)
    (tmp_path / "feval_config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        FEvalConfig.load(tmp_path)


def test_hub_id_offline_says_what_to_do():
    with pytest.raises(CheckpointError, match="local folder"):
        FEvalScorer.from_pretrained("feval-org/does-not-exist", device="cpu")


def test_not_a_checkpoint_folder(tmp_path):
    with pytest.raises(CheckpointError, match="neither"):
        FEvalScorer.from_pretrained(tmp_path, device="cpu")


def test_trust_remote_code_is_off_by_default(tiny_scorer):
    assert tiny_scorer.config.trust_remote_code is False


def test_thread_safe_scoring_matches_sequential(tiny_scorer, faces):
    from concurrent.futures import ThreadPoolExecutor

    imgs = [faces["a"], faces["b"], faces["none"], faces["a_moved"]]
    seq = [tiny_scorer.score([im], prompts="a woman").scores for im in imgs]
    with ThreadPoolExecutor(4) as ex:
        par = list(ex.map(lambda im: tiny_scorer.score([im], prompts="a woman").scores, imgs))
    for s, p in zip(seq, par):
        torch.testing.assert_close(s, p, rtol=0, atol=0, equal_nan=True)


def test_tiny_checkpoint_says_it_is_meaningless(tiny_ckpt):
    assert "MEANINGLESS" in (Path(tiny_ckpt) / "README.md").read_text()
