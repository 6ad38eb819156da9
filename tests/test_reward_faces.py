"""Rewards that cannot be gamed by losing the face, reasons that travel, a scorer per process and device.

One rule (``feval_core.scoring.result.judged_mean``) in every reward shape and in the pick/filter nodes: with a
reference, an image without a face scores identity 0 and gets the floor; the reasons reach the metadata and the
log once; Flow-GRPO's ``multi_score(device, score_dict)`` is a drop-in; each process scores on its own device.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from feval_core import DIMENSIONS
from feval_core.dimensions import (
    IMAGE_ERROR,
    NO_FACE,
    NO_PROMPT,
    NO_REFERENCE,
    NOT_ASKED,
    REFERENCE_UNUSABLE,
)
from feval_core.scoring.result import SCORE_FLOOR, judged_mean, judged_scores
from reward import (
    MODEL_ENV,
    DifferentiableReward,
    best_of_n,
    build_dpo_pairs,
    ddpo_reward,
    feval_reward,
    get_scorer,
    multi_score,
    resolve_device,
)
from reward import core as reward_core

ROOT = Path(__file__).resolve().parents[1]
NAN = float("nan")
W = {"quality": 1.0, "authenticity": 1.0, "identity": 1.0}
PROMPT = "a portrait of sks person"


@pytest.fixture(scope="module")
def pair(faces) -> torch.Tensor:
    """Two images generated for the same prompt: #0 kept the face, #1 lost it. ``[2, 3, H, W]`` in [0, 1]."""
    return torch.from_numpy(np.stack([faces["a"], faces["none"]])).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def ref(faces) -> np.ndarray:
    return faces["a_moved"]


# -- the rule, once ---------------------------------------------------------------------------------------------
def test_judged_mean_tells_not_asked_from_failed_and_floors_faceless_images():
    scores = torch.tensor([[60.0, 80.0, NAN, NAN],   # reference given, no face: identity failed
                           [60.0, 80.0, NAN, NAN],   # no reference: identity not asked
                           [60.0, 80.0, NAN, 40.0],  # reference unreadable: the caller's problem
                           [NAN, NAN, NAN, NAN]], requires_grad=True)  # unreadable image
    missing = [{"identity": NO_FACE, "correspondence": NO_PROMPT}, {"identity": NO_REFERENCE, "correspondence":
               NO_PROMPT}, {"identity": REFERENCE_UNUSABLE}, dict.fromkeys(DIMENSIONS, IMAGE_ERROR)]
    faces = [0, 1, 1, None]
    w = dict.fromkeys(DIMENSIONS, 1.0)
    got = judged_mean(scores, w, missing, faces, empty=-1.0)
    assert got.tolist() == pytest.approx([SCORE_FLOOR, 70.0, 60.0, -1.0])
    optional = judged_mean(scores, w, missing, faces, faces_required=False, empty=-1.0)
    assert optional.tolist() == pytest.approx([(60 + 80 + 0) / 3, 70.0, 60.0, -1.0])
    optional.sum().backward()
    assert scores.grad[0].tolist() == pytest.approx([1 / 3, 1 / 3, 0.0, 0.0])
    assert torch.isnan(judged_scores(scores.detach(), missing)[1, 2]), "not asked stays n/a"


def test_the_scorer_says_why_each_dimension_is_missing(tiny_scorer, faces, ref, tmp_path):
    res = tiny_scorer.score([faces["a"], faces["none"]], prompts=[PROMPT, None], refs=ref,
                            dims=("quality", "identity", "correspondence"))
    assert res.missing == [{"authenticity": NOT_ASKED}, {"authenticity": NOT_ASKED, "identity": NO_FACE,
                                                         "correspondence": NO_PROMPT}]
    bad = tmp_path / "ref.png"
    bad.write_bytes(b"not a png")
    res = tiny_scorer.score([faces["a"], str(bad)], refs=str(bad), dims="identity")
    assert res.missing[0]["identity"] == REFERENCE_UNUSABLE and res.missing[1]["identity"] == IMAGE_ERROR


# -- every reward shape -----------------------------------------------------------------------------------------
def test_feval_reward_faceless_image_with_reference_scores_lower(tiny_scorer, pair, ref):
    out = feval_reward(pair, PROMPT, ref, W, tiny_scorer, return_dict=True)
    assert float(out["reward"][1]) == SCORE_FLOOR < float(out["reward"][0])
    assert float(out["identity"][1]) == 0.0, "the face is gone next to a reference: identity 0, not NaN"
    optional = feval_reward(pair, PROMPT, ref, W, tiny_scorer, faces_required=False)
    assert float(optional[1]) < float(optional[0]), "even with faces optional the lost identity counts 0"
    assert float(optional[1]) > SCORE_FLOOR


def test_ddpo_reward_faceless_lower_reasons_in_metadata_logged_once(tiny_scorer, pair, ref, caplog):
    fn = ddpo_reward(tiny_scorer, W)
    meta_in = [{"ref": ref}, {"ref": ref}]
    with caplog.at_level(logging.DEBUG, logger="reward.core"):
        rewards, meta = fn(pair, (PROMPT, PROMPT), meta_in)
        fn(pair, (PROMPT, PROMPT), meta_in)
    assert float(rewards[1]) < float(rewards[0])
    assert meta["missing"][1]["identity"] == NO_FACE and float(meta["identity"][1]) == 0.0
    assert any("floor" in w for w in meta["warnings"][1]) and meta["warnings"][0] == []
    floor_lines = [r for r in caplog.records if "reward = floor" in r.getMessage()]
    assert [r.levelno for r in floor_lines] == [logging.WARNING, logging.DEBUG], "once per distinct reason"
    assert "1 of 2 images" in floor_lines[0].getMessage()


def test_flow_grpo_multi_score_is_a_drop_in(tiny_ckpt, pair, ref, monkeypatch, tmp_path):
    monkeypatch.setenv(MODEL_ENV, str(tiny_ckpt))
    fn = multi_score("cpu", {"quality": 1.0, "id": 1.0})
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"")
    images = torch.cat([pair, pair[:1]])
    metadata = [{"ref": ref}, {"ref": ref}, {"ref": str(bad)}]
    scores, meta = fn(images, [PROMPT] * 3, metadata, only_strict=True)
    assert set(scores) == {"quality", "identity", "avg"}
    assert scores["avg"][1] == 0.0 < scores["avg"][0]
    assert scores["identity"][1] == 0.0, "failed, not filled"
    assert scores["identity"][2] == pytest.approx(np.mean(scores["identity"][:2])), "n/a: the mean where it applies"
    assert meta["missing"][2] == {"identity": REFERENCE_UNUSABLE}
    assert any("reference unusable" in w for w in meta["warnings"][2])
    # what Flow-GRPO's trainers do with it: a float tensor per key, advantages from avg, logged means
    tensors = {k: torch.as_tensor(v).float() for k, v in scores.items()}
    assert all(math.isfinite(float(t.mean())) for t in tensors.values())
    assert get_scorer(str(tiny_ckpt), device="cpu").device.type == "cpu"
    with pytest.raises(ValueError, match="not an F-Eval score.*Flow-GRPO's own multi_score"):
        multi_score("cpu", {"pickscore": 1.0})


class _FacesPipeline:
    """A text-to-image pipeline whose even seeds give the face and odd seeds lose it (best-of-N ranks, not draws)."""

    def __init__(self, face: np.ndarray, none: np.ndarray) -> None:
        self.images = (face, none)

    def __call__(self, prompt, generator, **_):
        return SimpleNamespace(images=[Image.fromarray(self.images[g.initial_seed() % 2]) for g in generator])


def test_best_of_n_never_picks_the_faceless_candidate(tiny_scorer, faces, ref):
    pipe = _FacesPipeline(faces["a"], faces["none"])
    for required in (True, False):
        res = best_of_n(pipe, PROMPT, n=4, k=2, ref=ref, seed=1, weights=W, scorer=tiny_scorer,
                        faces_required=required)
        assert sorted(res.seeds) == [2, 4], "the candidates with the face win"
        assert (res.all_rewards[[0, 2]] < res.all_rewards[[1, 3]]).all()


def test_dpo_pair_prefers_the_image_with_the_face(tiny_scorer, faces, ref, tmp_path):
    out = build_dpo_pairs([[faces["none"], faces["a"]]], [PROMPT], tmp_path / "pairs", refs=ref, margin=1.0,
                          weights=W, scorer=tiny_scorer)
    assert out.num_pairs == 1
    row = pd.read_parquet(out.path / "data" / "train.parquet").iloc[0]
    chosen = row["jpg_0"] if row["label_0"] == 1.0 else row["jpg_1"]
    chosen = chosen["bytes"] if isinstance(chosen, dict) else chosen
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(chosen)).convert("RGB")), faces["a"])


def test_differentiable_reward_faceless_lower(tiny_scorer, pair, ref):
    for required in (True, False):
        r = DifferentiableReward(tiny_scorer, W, faces_required=required)(pair.clone(), PROMPT, refs=ref).detach()
        assert float(r[1]) < float(r[0])
    images = pair.clone().requires_grad_(True)
    DifferentiableReward(tiny_scorer, W)(images, PROMPT, refs=ref).sum().backward()
    assert images.grad[0].abs().sum() > 0 and images.grad[1].abs().sum() == 0, "the floor is a constant"


# -- the pick and filter nodes ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory, tiny_ckpt: Path):
    from feval_core.testing.facepack import write_tiny_face_pack
    from tests.comfy_stub import install, load_pack, node_classes

    base = tmp_path_factory.mktemp("ComfyUI")
    install(base)
    shutil.copytree(tiny_ckpt, base / "models" / "feval" / "tiny")
    write_tiny_face_pack(base / "models" / "insightface", name="tiny_face", seed=0)
    classes = node_classes(load_pack())
    handle = classes["FEvalModelLoader"].execute("models folder", "tiny", "", "auto", "cpu", "auto")[0]
    return classes, handle


def test_pick_and_filter_nodes_never_keep_a_faceless_image_by_default(nodes, faces, ref):
    classes, handle = nodes
    images = torch.from_numpy(np.stack([faces["none"], faces["a"], faces["none"], faces["b"]])).float() / 255.0
    reference = torch.from_numpy(ref).float()[None] / 255.0
    scores = classes["FEvalScoreFaces"].execute(handle, images, correspondence=False, reference=reference).args[0]
    assert scores.missing[0]["identity"] == NO_FACE and scores.faces == [0, 1, 0, 1]
    pick = classes["FEvalPickBest"]
    out = pick.execute(images, scores, group_size=2, keep=1)
    assert out.args[2] == "1,3" and "no face in the image" in out.args[3]
    # a face lost next to a reference scores identity 0, so it loses even where faceless images are allowed
    assert pick.execute(images, scores, group_size=2, keep=1, allow_no_face=True).args[2] == "1,3"
    only_faceless = scores.subset([0, 2])
    out = pick.execute(images[[0, 2]], only_faceless)
    assert out.args[2] == "" and "no image has a face" in out.args[3]
    assert pick.execute(images[[0, 2]], only_faceless, allow_no_face=True).args[2] == "0"
    filt = classes["FEvalFilterByScore"]
    kept = filt.execute(images, scores, top_k=4)
    assert kept.args[2] == "1,3" or kept.args[2] == "3,1"
    assert filt.execute(images, scores, allow_no_face=True).args[3] == 4


# -- one scorer per process and device --------------------------------------------------------------------------
def test_device_is_the_calling_process_s(monkeypatch):
    monkeypatch.setattr(reward_core, "accelerate_device", lambda: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("FEVAL_REWARD_DEVICE", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert resolve_device() == "cuda:2", "torchrun / deepspeed rank 2 scores on GPU 2"
    monkeypatch.setenv("FEVAL_REWARD_DEVICE", "cuda")
    assert resolve_device() == "cuda:2", "a bare 'cuda' means this process's GPU"
    assert resolve_device("cuda") == "cuda:2"
    monkeypatch.setenv("FEVAL_REWARD_DEVICE", "cuda:0")
    assert resolve_device() == "cuda:0", "an explicit GPU is honoured"
    assert resolve_device("cpu") == "cpu", "the argument wins over the environment"
    monkeypatch.delenv("FEVAL_REWARD_DEVICE")
    monkeypatch.setattr(reward_core, "accelerate_device", lambda: "cuda:3")
    assert resolve_device() == "cuda:3", "accelerate's device first"
    monkeypatch.setattr(reward_core, "accelerate_device", lambda: None)
    monkeypatch.setenv("LOCAL_RANK", "5")
    with pytest.raises(RuntimeError, match="LOCAL_RANK=5 but this machine has 4 GPUs"):
        resolve_device()


_RANK_SCRIPT = """
import json, os, sys, torch
from accelerate import PartialState
state = PartialState(cpu=not torch.cuda.is_available())  # without cpu=True no process group on CPU machines
import reward
sc = reward.get_scorer(sys.argv[1])
again = reward.get_scorer(sys.argv[1])
print("RANK " + json.dumps({"rank": state.process_index, "local_rank": int(os.environ["LOCAL_RANK"]),
      "state": str(state.device), "resolved": reward.resolve_device(), "scorer": str(sc.device),
      "shared": sc is again}), flush=True)
"""


def test_each_accelerate_process_loads_its_scorer_on_its_own_device(tiny_ckpt, tmp_path):
    """``accelerate launch --num_processes 2`` on CPU: each process's scorer is on its accelerate device (on GPUs
    that is cuda:<local rank>: see test_device_is_the_calling_process_s), once per process."""
    from tests.test_speed import _free_port

    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(script), str(tiny_ckpt)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("FEVAL_REWARD_DEVICE", None)
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line[5:]) for line in r.stdout.splitlines() if line.startswith("RANK ")]
    assert sorted(row["rank"] for row in rows) == [0, 1]
    for row in rows:
        assert row["resolved"] == row["state"] and row["shared"]
        placed, wanted = torch.device(row["scorer"]), torch.device(row["state"])
        assert placed.type == wanted.type and (placed.type == "cpu" or placed.index == wanted.index)
