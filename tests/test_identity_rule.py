"""One identity rule everywhere: a faceless image or reference gives NaN identity with its reason, and the same
reward (the engine's ``judged_mean``: a face lost next to a reference counts 0, a faceless image gets the floor),
through the scorer, ``feval_reward``, ``DifferentiableReward`` and the ComfyUI score node."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from feval_core import DIMENSIONS
from feval_core.scoring.result import judged_mean
from reward import DifferentiableReward, feval_reward
from tests.comfy_stub import install, load_pack, node_classes

WEIGHTS = {"quality": 1.0, "identity": 2.0}
ID = DIMENSIONS.index("identity")


@pytest.fixture(scope="module")
def score_node(tmp_path_factory: pytest.TempPathFactory, tiny_ckpt: Path):
    """The ComfyUI "Score faces" node and a model handle on the tiny checkpoint."""
    from feval_core.testing.facepack import write_tiny_face_pack

    base = tmp_path_factory.mktemp("ComfyUI")
    install(base)
    shutil.copytree(tiny_ckpt, base / "models" / "feval" / "tiny")
    write_tiny_face_pack(base / "models" / "insightface", name="tiny_face", seed=0)
    nodes = node_classes(load_pack())
    handle = nodes["FEvalModelLoader"].execute("models folder", "tiny", "", "auto", "cpu", "auto")[0]
    return nodes["FEvalScoreFaces"], handle


def _bchw(*arrays: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


@pytest.mark.parametrize("case", ["faceless image", "faceless reference"])
def test_identity_and_reward_agree_across_all_four_paths(score_node, faces, case: str) -> None:
    node, handle = score_node
    scorer = handle.scorer
    images = _bchw(faces["a"], faces["none"], faces["b"])
    ref = faces["a_moved"] if case == "faceless image" else faces["none"]
    ref_t = _bchw(ref)[0]

    result = scorer.score(images, refs=ref_t, dims=("quality", "identity"))
    engine = result.scores
    out = feval_reward(images, refs=ref_t, weights=WEIGHTS, scorer=scorer, return_dict=True)
    diff = DifferentiableReward(scorer, WEIGHTS)
    diff_scores = diff.scores(images, refs=ref_t).detach()
    diff_reward = diff(images, refs=ref_t).detach()
    node_out = node.execute(handle, images.permute(0, 2, 3, 1), authenticity=False, correspondence=False,
                            reference=ref_t.permute(1, 2, 0)[None]).args[0]
    node_scores = node_out.values

    expected_nan = [False, True, False] if case == "faceless image" else [True, True, True]
    for name, scores in (("scorer", engine), ("DifferentiableReward", diff_scores), ("score node", node_scores)):
        assert [math.isnan(float(v)) for v in scores[:, ID]] == expected_nan, name
        assert not torch.isnan(scores[:, DIMENSIONS.index("quality")]).any(), name
    reason = "no face in the image" if case == "faceless image" else "no face in the reference"
    assert result.missing[1]["identity"] == reason and node_out.missing[1]["identity"] == reason
    # the reward's identity: a face lost next to a usable reference failed (0); a faceless reference is not scored
    reward_identity = out["identity"]
    assert [math.isnan(float(v)) for v in reward_identity] == [case != "faceless image"] * 3
    if case == "faceless image":
        assert float(reward_identity[1]) == 0.0
    rule = judged_mean(engine, WEIGHTS, result.missing, result.faces, empty=0.0)
    assert float(rule[1]) == 0.0, "a faceless image gets the floor"
    torch.testing.assert_close(out["reward"], rule)
    torch.testing.assert_close(judged_mean(node_scores, WEIGHTS, node_out.missing, node_out.faces, empty=0.0),
                               out["reward"])
    # torch-only preprocessing matches the processors to ~1e-2 per pixel: the rewards agree to a fraction of a point
    torch.testing.assert_close(diff_reward, out["reward"], atol=0.5, rtol=0)
    torch.testing.assert_close(diff_scores, engine, atol=0.5, rtol=0, equal_nan=True)


@pytest.mark.parametrize("case", ["faceless image", "faceless reference"])
def test_zero_shot_identity_agrees_with_the_face_similarity_node(score_node, tiny_ckpt, faces, case: str) -> None:
    """Zero-shot identity (ArcFace, no LMM) through the scorer, the rewards and the node that needs no LMM."""
    from feval_core import FEvalScorer
    from tests.comfy_stub import load_pack, node_classes

    zero_shot = FEvalScorer.zero_shot(str(tiny_ckpt / "backbone"), face_pack="tiny_face",
                                      face_root=tiny_ckpt / "face_pack", device="cpu")
    images = _bchw(faces["a"], faces["none"], faces["b"])
    ref = faces["a_moved"] if case == "faceless image" else faces["none"]
    ref_t = _bchw(ref)[0]
    result = zero_shot.score(images, refs=ref_t, dims="identity")
    engine = result.scores[:, ID]
    reward = feval_reward(images, refs=ref_t, weights={"identity": 1.0}, scorer=zero_shot, nan_reward=float("nan"))
    diff = DifferentiableReward(zero_shot, {"identity": 1.0}, nan_reward=float("nan"))(images, refs=ref_t).detach()
    similarity = node_classes(load_pack())["FEvalFaceSimilarity"]
    node_out = similarity.execute(images.permute(0, 2, 3, 1), ref_t.permute(1, 2, 0)[None], "tiny_face", "cpu").args
    node_identity = node_out[1]
    expected_nan = [False, True, False] if case == "faceless image" else [True, True, True]
    for name, values in (("scorer", engine), ("similarity node", torch.tensor(node_identity))):
        assert [math.isnan(float(v)) for v in values] == expected_nan, name
        torch.testing.assert_close(values.float(), engine, atol=1e-4, rtol=0, equal_nan=True, msg=name)
    rule = judged_mean(result.scores, {"identity": 1.0}, result.missing, result.faces)
    assert float(rule[1]) == 0.0, "the faceless image: floor"
    assert node_out[2].missing == result.missing
    for name, values in (("feval_reward", reward), ("DifferentiableReward", diff)):
        torch.testing.assert_close(values.float(), rule, atol=1e-4, rtol=0, equal_nan=True, msg=name)
