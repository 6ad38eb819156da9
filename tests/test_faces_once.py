"""Faces are detected once: F-Eval's FaceInfos go to ViT-FIQA and the landmark pre-filter, which give the same numbers
as when they detect themselves; the pre-filter rule in the API, the CLI and a sharded ``feval score`` run."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import face_image

BOXES = [(32, 32, 96, 96), (24, 30, 104, 110), (40, 36, 88, 84), (20, 20, 92, 92), (36, 28, 100, 92),
         (28, 40, 92, 104), (44, 44, 92, 92), (30, 24, 98, 92)]


@pytest.fixture(scope="module")
def pack_root(tiny_fiqa: Path) -> Path:
    return tiny_fiqa / "face_pack"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Faces of several sizes and places, one image without a face and one that cannot be read."""
    folder = tmp_path_factory.mktemp("once") / "imgs"
    folder.mkdir()
    for i, box in enumerate(BOXES):
        Image.fromarray(face_image(i % 3, box=box)).save(folder / f"f{i}.png")
    Image.fromarray(np.full((128, 128, 3), 20, np.uint8)).save(folder / "none.png")
    (folder / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return folder


@pytest.fixture(scope="module")
def prefilter_dir(tmp_path_factory: pytest.TempPathFactory, pack_root: Path) -> Path:
    """A small forest on the tiny pack's 5-point features (label: the face's size), saved as a pre-filter folder."""
    from feval_core.faces.encoder import FaceEncoder
    from feval_core.fiqa.landmarks import detect_faces
    from feval_core.fiqa.prefilter import LandmarkPrefilter, PrefilterConfig, fit_forest
    from feval_core.model.config import FaceEncoderConfig

    encoder = FaceEncoder("tiny_face", root=pack_root, det_size=(128, 128))
    rng = np.random.default_rng(0)
    arrays = []
    for s in range(24):
        side = int(rng.integers(40, 90))
        x, y = (int(v) for v in rng.integers(8, 128 - side - 8, 2))
        arrays.append(face_image(s % 4, box=(x, y, x + side, y + side)))
    found = detect_faces(encoder, arrays)
    labels = (found.bbox[found.found, 2] - found.bbox[found.found, 0]) / 128 * 100
    cfg = PrefilterConfig(n_estimators=10, max_depth=4, min_samples_leaf=1,
                          face=FaceEncoderConfig(pack="tiny_face", root=str(pack_root), det_size=128))
    onnx_bytes = fit_forest(found.features(5), labels, cfg)
    out = tmp_path_factory.mktemp("pf") / "pf"
    LandmarkPrefilter(cfg, onnx_bytes).save_pretrained(out, onnx_bytes)
    return out


@pytest.fixture(scope="module")
def scorer(tiny_ckpt: Path, pack_root: Path):
    from feval_core import FEvalScorer

    sc = FEvalScorer.from_pretrained(tiny_ckpt, device="cpu", face_root=pack_root)
    sc.workers = 0
    return sc


def _paths(folder: Path) -> list[str]:
    return [str(p) for p in sorted(folder.iterdir())]


def test_fiqa_scores_from_fevals_faces_with_one_detection_per_image(scorer, tiny_fiqa, images, caplog) -> None:
    from feval_core.fiqa.scorer import FIQAScorer

    fiqa = FIQAScorer.from_pretrained(tiny_fiqa, device="cpu")
    paths = _paths(images)
    alone = fiqa.score(paths)  # detects itself
    assert fiqa.face_encoder is scorer.face_encoder  # the same pack and settings: loaded once (faces/registry.py)
    before = detections(scorer, fiqa)
    res = scorer.score(paths, dims="quality", keep_faces=True)
    shared = fiqa.score(paths, faces=res.face_info)
    readable = len(paths) - 1
    assert detections(scorer, fiqa) - before == readable  # once per readable image, ViT-FIQA detected nothing
    assert torch_equal(shared.utility, alone.utility) and torch_equal(shared.raw, alone.raw)
    assert shared.to_records() == alone.to_records()
    assert math.isnan(float(shared.utility[-2])) and shared.faces[-2] == 0  # none.png: NaN, not a guess
    assert shared.errors[-1] and res.errors[-1]  # the unreadable file: an error row in both, the rest scored
    # another detector size: not the same detections, so ViT-FIQA detects itself and says so
    from feval_core.faces.encoder import FaceEncoder

    other = FaceEncoder("tiny_face", root=fiqa.face_encoder.root, det_size=(160, 160))
    infos = [other.analyze(np.asarray(Image.open(p).convert("RGB"))) for p in paths[:-1]] + [None]
    with caplog.at_level(logging.DEBUG, logger="feval_core.fiqa.scorer"):
        again = fiqa.score(paths, faces=infos)
    assert "detected them again" in caplog.text
    assert again.to_records() == alone.to_records()


def detections(*users) -> int:
    """Images detected by the users' face encoders, each encoder counted once (they may share one)."""
    return sum(e.detections for e in {id(u.face_encoder): u.face_encoder for u in users}.values())


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(torch.nan_to_num(a, nan=-1.0), torch.nan_to_num(b, nan=-1.0)))


def test_prefilter_scores_from_given_faces_as_from_its_own_detection(scorer, prefilter_dir, images) -> None:
    from feval_core.fiqa.prefilter import LandmarkPrefilter

    pf = LandmarkPrefilter.from_pretrained(prefilter_dir)
    paths = _paths(images)
    alone = pf.score(paths)
    assert pf.share_faces(scorer.face_encoder)
    res = scorer.score(paths, dims="quality", keep_faces=True)
    before = pf.face_encoder.detections
    shared = pf.score(paths, faces=res.face_info)
    assert pf.face_encoder.detections == before + 1  # only the unreadable image (no FaceInfo) is tried again
    assert np.array_equal(shared.values, alone.values, equal_nan=True)
    assert shared.to_records(50.0) == alone.to_records(50.0)
    assert np.isnan(alone.values[-2:]).all() and np.isfinite(alone.values[:-2]).all()


def test_106_point_prefilter_has_the_scorer_add_landmarks(scorer, tiny_fiqa, images, tmp_path) -> None:
    import shutil

    from feval_core.faces.encoder import FaceEncoder
    from feval_core.faces.landmark_model import find_landmark_model
    from feval_core.fiqa.landmarks import detect_faces
    from feval_core.fiqa.prefilter import LandmarkPrefilter, PrefilterConfig, fit_forest
    from feval_core.model.config import FaceEncoderConfig
    from tests.test_fiqa_prefilter import _write_tiny_106_model

    root = tmp_path / "packs"
    shutil.copytree(tiny_fiqa / "face_pack", root)
    _write_tiny_106_model(root / "models" / "tiny_face" / "lmk106_tiny.onnx")
    enc = FaceEncoder("tiny_face", root=root, det_size=(128, 128))
    lmk = find_landmark_model(enc.pack_dir)
    paths = _paths(images)[:-1]
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    found = detect_faces(enc, arrays * 2, lmk)
    cfg = PrefilterConfig(points=106, n_estimators=5, max_depth=3, min_samples_leaf=1,
                          face=FaceEncoderConfig(pack="tiny_face", root=str(root), det_size=128))
    rng = np.random.default_rng(1)
    onnx_bytes = fit_forest(found.features(106), rng.uniform(0, 100, int(found.found.sum())), cfg)
    LandmarkPrefilter(cfg, onnx_bytes).save_pretrained(tmp_path / "pf106", onnx_bytes)
    pf = LandmarkPrefilter.from_pretrained(tmp_path / "pf106")
    alone = pf.score(paths)
    from feval_core import FEvalScorer

    sc = FEvalScorer(scorer.model, FaceEncoder("tiny_face", root=root, det_size=(128, 128)))
    sc.workers = 0
    res = sc.score(paths, dims="quality", prefilter=pf, keep_faces=True)  # share_faces turns the landmarks on
    assert all(i.landmarks is not None for i in res.face_info if i.has_face)
    before = pf.face_encoder.detections
    shared = pf.score(paths, faces=res.face_info)
    assert pf.face_encoder.detections == before
    assert np.array_equal(shared.values, alone.values, equal_nan=True)
    assert res.prefilter == [r["prefilter"] for r in alone.to_records()]


def test_prefilter_in_the_api_equals_the_cli(scorer, prefilter_dir, images, tiny_ckpt, pack_root, tmp_path) -> None:
    from feval_core.cli import main
    from feval_core.dimensions import PREFILTERED
    from feval_core.fiqa.prefilter import LandmarkPrefilter

    pf = LandmarkPrefilter.from_pretrained(prefilter_dir)
    paths = _paths(images)
    values = pf.score(paths).values
    t = float(np.median(values[np.isfinite(values)]))
    before = detections(scorer, pf)
    res = scorer.score(paths, prefilter=pf, prefilter_threshold=t)
    assert detections(scorer, pf) - before == len(paths) - 1  # the scorer's detections only (not the unreadable one)
    skipped = [i for i, v in enumerate(values) if v < t]
    assert 0 < len(skipped) < len(BOXES)
    for i, rec in enumerate(res.to_records()):
        if i in skipped:
            assert rec["quality"] is None and res.missing[i]["quality"] == PREFILTERED
            assert "skipped: pre-filter score" in rec["warnings"][-1]
        elif rec["error"] is None:  # faceless images are never skipped
            assert rec["quality"] is not None
    assert res.errors[-1] is not None and res.prefilter[-1] is None and res.prefilter[-2] is None
    totals = res.judged({"quality": 1.0, "authenticity": 1.0}).tolist()
    assert all(totals[i] == 0.0 for i in skipped)  # skipped by the caller's quick check: never kept or picked
    assert all(totals[i] > 0.0 for i, rec in enumerate(res.to_records()) if i not in skipped and rec["faces"])
    out = tmp_path / "cli.jsonl"
    assert main(["score", str(images), "--model", str(tiny_ckpt), "--face-root", str(pack_root), "--dims",
                 "quality,authenticity", "--prefilter-model", str(prefilter_dir), "--prefilter", repr(t),
                 "--workers", "0", "--out", str(out)]) == 1  # 1: the unreadable image
    cli = {r["image"]: r for r in map(json.loads, out.read_text().splitlines())}
    api = scorer.score(paths, dims="quality,authenticity", prefilter=pf, prefilter_threshold=t).to_records()
    assert [cli[r["image"]] for r in api] == api
    with pytest.raises(ValueError, match="needs a prefilter"):
        scorer.score(paths[:1], prefilter_threshold=40.0)


def test_sharded_score_honours_the_prefilter(prefilter_dir, images, tiny_ckpt, pack_root, tiny_fiqa,
                                              tmp_path) -> None:
    from feval_core.cli import main
    from feval_core.fiqa.prefilter import LandmarkPrefilter
    from tests.test_multinode import launch_two_machines

    values = LandmarkPrefilter.from_pretrained(prefilter_dir).score(_paths(images)).values
    t = float(np.median(values[np.isfinite(values)]))
    args = ["score", str(images), "--model", str(tiny_ckpt), "--face-root", str(pack_root), "--fiqa", str(tiny_fiqa),
            "--dims", "quality", "--prefilter-model", str(prefilter_dir), "--prefilter", repr(t), "--batch-size", "3",
            "--device", "cpu", "--workers", "0"]
    single = tmp_path / "single.jsonl"
    assert main([*args, "--out", str(single)]) == 1
    sharded = tmp_path / "sharded.jsonl"
    runs = launch_two_machines(["-m", "feval_core.cli", *args, "--out", str(sharded)], tmp_path)
    assert "from 2 processes" in runs[0].stderr, runs[0].stderr[-3000:]
    assert sharded.read_text().splitlines() == single.read_text().splitlines()
    rows = [json.loads(line) for line in single.read_text().splitlines()]
    assert any("skipped" in " ".join(r.get("warnings", [])) for r in rows)
    assert all("prefilter" in r and "utility" in r for r in rows)


def test_reward_with_utility_detects_each_face_once(scorer, tiny_fiqa, faces) -> None:
    import torch

    from feval_core.fiqa.scorer import FIQAScorer
    from reward import feval_reward

    fiqa = FIQAScorer.from_pretrained(tiny_fiqa, device="cpu")
    batch = [Image.fromarray(faces[k]) for k in ("a", "b", "none", "a_moved")]
    alone = fiqa.score(batch)  # the detect-twice path's utility
    before = detections(scorer, fiqa)
    out = feval_reward(batch, weights={"quality": 1.0, "utility": 1.0}, scorer=scorer, fiqa=fiqa, return_dict=True)
    assert detections(scorer, fiqa) - before == len(batch)  # once each, whether or not the two share an encoder
    assert torch_equal(out["utility"], alone.utility)
    expected = out["result"].judged({"quality": 1.0}, utility=alone.utility, utility_weight=1.0, empty=0.0)
    assert torch.equal(out["reward"], expected)
