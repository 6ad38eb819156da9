"""FaceEncoder and the tiny offline insightface pack: loading, detection, identity, errors, providers."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from feval_core.errors import FaceModelError, ImageInputError
from feval_core.faces.encoder import FaceEncoder, FaceInfo, select_providers
from feval_core.faces.identity import arcface_identity_score
from feval_core.testing.facepack import (
    TINY_PACK_NAME,
    draw_tiny_face,
    write_tiny_face_pack,
)


@pytest.fixture(scope="session")
def face_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("insightface")
    write_tiny_face_pack(root)
    return root


@pytest.fixture(scope="session")
def encoder(face_root: Path) -> FaceEncoder:
    return FaceEncoder(TINY_PACK_NAME, root=face_root)


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any insightface download attempt fail loudly."""
    import importlib

    face_analysis = importlib.import_module("insightface.app.face_analysis")
    storage = importlib.import_module("insightface.utils.storage")
    download = importlib.import_module("insightface.utils.download")  # shadowed by a function in insightface.utils

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"insightface tried to download: {args}")

    monkeypatch.setattr(download, "download_file", refuse)
    monkeypatch.setattr(storage, "download_file", refuse)
    monkeypatch.setattr(storage, "download", refuse)
    monkeypatch.setattr(face_analysis, "ensure_available", refuse)


def canvas(height: int = 480, width: int = 640, value: int = 0) -> np.ndarray:
    return np.full((height, width, 3), value, dtype=np.uint8)


def test_tiny_pack_routes_like_a_real_pack(face_root: Path) -> None:
    from insightface.app import FaceAnalysis

    pack_dir = face_root / "models" / TINY_PACK_NAME
    assert sorted(p.name for p in pack_dir.iterdir()) == ["det_tiny.onnx", "rec_tiny.onnx"]
    assert all(p.stat().st_size < 1_000_000 for p in pack_dir.iterdir())
    app = FaceAnalysis(
        name=TINY_PACK_NAME,
        root=str(face_root),
        allowed_modules=["detection", "recognition"],
        providers=["CPUExecutionProvider"],
    )
    assert set(app.models) == {"detection", "recognition"}
    det, rec = app.models["detection"], app.models["recognition"]
    assert type(det).__name__ == "SCRFD" and type(rec).__name__ == "ArcFaceONNX"
    assert (det.fmc, det._num_anchors, det.use_kps, det.batched) == (3, 2, True, False)
    assert (det.input_mean, det.input_std) == (127.5, 128.0)
    assert rec.input_size == (112, 112) and rec.output_shape[-1] == 512
    assert (rec.input_mean, rec.input_std) == (127.5, 127.5)


def test_drawn_face_is_found_where_drawn(encoder: FaceEncoder) -> None:
    box = (200, 120, 320, 240)
    image = draw_tiny_face(canvas(), box, seed=3)
    info = encoder.analyze(image)
    assert info.has_face and info.num_faces == 1
    np.testing.assert_allclose(info.bbox, box, atol=3)
    assert info.kps.shape == (5, 2)
    assert (info.kps >= np.array(box[:2]) - 1).all() and (info.kps <= np.array(box[2:]) + 1).all()
    assert info.kps[0, 0] < info.kps[1, 0] and info.kps[2, 1] < info.kps[3, 1]  # eyes left->right, nose above mouth
    assert 0.5 < info.det_score <= 1.0
    assert info.embedding.shape == (512,) and info.embedding.dtype == np.float32
    assert np.linalg.norm(info.embedding) == pytest.approx(1.0, abs=1e-5)
    assert info.crop.shape == (112, 112, 3) and info.crop.dtype == np.uint8
    assert info.crop.mean() > 150  # the aligned crop is the bright face patch, not background
    same = encoder.analyze(Image.fromarray(image))  # PIL in, same answer
    np.testing.assert_allclose(same.embedding, info.embedding, atol=1e-6)
    as_float = encoder.analyze(image.astype(np.float32) / 255.0)
    np.testing.assert_allclose(as_float.bbox, info.bbox, atol=1e-3)
    assert encoder.embedding_dim == 512


@pytest.mark.parametrize("value", [0, 128, 255])
def test_flat_image_has_no_face(encoder: FaceEncoder, value: int) -> None:
    info = encoder.analyze(canvas(300, 500, value))
    assert info.detector == encoder.detector_key  # "no face", as this detector saw it: others may reuse the answer
    assert dataclasses.replace(info, detector=None) == FaceInfo.empty()
    assert not info.has_face and info.num_faces == 0
    assert info.bbox is None and info.kps is None and info.det_score is None
    assert info.embedding is None and info.crop is None
    assert encoder.embed(canvas(300, 500, value)) is None


def test_counts_faces_and_picks_the_largest(encoder: FaceEncoder) -> None:
    boxes = [(30, 30, 90, 90), (380, 40, 470, 130), (100, 250, 260, 410), (520, 360, 580, 420)]
    image = canvas()
    for seed, box in enumerate(boxes):
        image = draw_tiny_face(image, box, seed=seed, margin=0.5)
    info = encoder.analyze(image)
    assert info.num_faces == len(boxes)
    np.testing.assert_allclose(info.bbox, boxes[2], atol=3)
    alone = encoder.analyze(draw_tiny_face(canvas(), boxes[2], seed=2))
    assert FaceEncoder.cosine(info.embedding, alone.embedding) > 0.99


def test_identity_follows_the_pattern_not_the_place(encoder: FaceEncoder) -> None:
    a = encoder.embed(draw_tiny_face(canvas(), (60, 60, 180, 180), seed=0))
    a_moved = encoder.embed(draw_tiny_face(canvas(256, 256, 40), (120, 110, 200, 190), seed=0))
    a_big = encoder.embed(draw_tiny_face(canvas(720, 1280), (700, 150, 1000, 450), seed=0))
    others = [encoder.embed(draw_tiny_face(canvas(), (300, 200, 400, 300), seed=s)) for s in (1, 2, 3)]
    assert FaceEncoder.cosine(a, a_moved) >= 0.9 and FaceEncoder.cosine(a, a_big) >= 0.9
    for other in others:
        assert FaceEncoder.cosine(a, other) < 0.6
    assert math.isnan(FaceEncoder.cosine(a, None)) and math.isnan(FaceEncoder.cosine(None, None))
    assert math.isnan(FaceEncoder.cosine(a, np.zeros(512)))


def test_analyze_many_and_threads_agree(encoder: FaceEncoder) -> None:
    images = [draw_tiny_face(canvas(), (100 + 40 * i, 80, 200 + 40 * i, 180), seed=i) for i in range(4)]
    images.append(canvas())
    sequential = encoder.analyze_many(images)
    assert [i.num_faces for i in sequential] == [1, 1, 1, 1, 0]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(encoder.analyze, images * 2))
    for ref, got in zip(sequential * 2, threaded):
        assert ref.num_faces == got.num_faces
        if ref.has_face:
            np.testing.assert_allclose(ref.embedding, got.embedding, atol=1e-6)


def test_real_photo_runs(encoder: FaceEncoder) -> None:
    import insightface

    photo = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    if not photo.is_file():
        pytest.skip(f"{photo} is not shipped with this insightface")
    info = encoder.analyze(Image.open(photo))  # a tiny hand-built detector: no claim about real faces
    assert isinstance(info, FaceInfo) and info.num_faces >= 0
    assert info.has_face == (info.embedding is not None)


def test_missing_pack_says_where_it_looked(tmp_path: Path, no_download: None) -> None:
    with pytest.raises(FaceModelError) as err:
        FaceEncoder("buffalo_l", root=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "models" / "buffalo_l") in message and "does not exist" in message
    assert "unzip" in message and "root=" in message

    (tmp_path / "models" / "empty").mkdir(parents=True)
    with pytest.raises(FaceModelError, match="has no .onnx files"):
        FaceEncoder("empty", root=tmp_path)


def test_default_root_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_download: None
) -> None:
    monkeypatch.setenv("FEVAL_FACE_ROOT", str(tmp_path / "faces"))
    with pytest.raises(FaceModelError, match=str(tmp_path / "faces" / "models" / "antelopev2")):
        FaceEncoder("antelopev2")
    write_tiny_face_pack(tmp_path / "faces")
    assert FaceEncoder(TINY_PACK_NAME).root == tmp_path / "faces"


def test_broken_packs_raise_face_model_error(tmp_path: Path, face_root: Path, no_download: None) -> None:
    nested = tmp_path / "models" / "nested" / "nested"
    nested.mkdir(parents=True)
    (nested / "det_tiny.onnx").write_bytes((face_root / "models" / TINY_PACK_NAME / "det_tiny.onnx").read_bytes())
    with pytest.raises(FaceModelError, match="one folder too deep"):
        FaceEncoder("nested", root=tmp_path)

    only_rec = tmp_path / "models" / "only_rec"
    only_rec.mkdir(parents=True)
    (only_rec / "rec.onnx").write_bytes((face_root / "models" / TINY_PACK_NAME / "rec_tiny.onnx").read_bytes())
    with pytest.raises(FaceModelError, match="could not load"):
        FaceEncoder("only_rec", root=tmp_path)

    corrupt = tmp_path / "models" / "corrupt"
    corrupt.mkdir(parents=True)
    (corrupt / "det.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(FaceModelError, match="could not load"):
        FaceEncoder("corrupt", root=tmp_path)


def test_cuda_without_cuda_provider_falls_back_to_cpu(
    face_root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with caplog.at_level(logging.WARNING, logger="feval_core.faces.encoder"):
        assert select_providers("cuda") == (["CPUExecutionProvider"], -1)
    assert "CUDAExecutionProvider" in caplog.text
    enc = FaceEncoder(TINY_PACK_NAME, root=face_root, device="cuda:0")
    assert enc.providers == ["CPUExecutionProvider"]
    assert enc.analyze(draw_tiny_face(canvas(), (100, 100, 200, 200))).num_faces == 1

    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert select_providers("cuda:1") == ([("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"], 1)
    assert select_providers("CPU") == (["CPUExecutionProvider"], -1)
    assert select_providers("mps") == (["CPUExecutionProvider"], -1)
    for bad in ("gpu", "cuda:x"):
        with pytest.raises(ValueError, match="cuda:N"):
            select_providers(bad)


def test_bad_arguments_and_inputs(face_root: Path, encoder: FaceEncoder) -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        FaceEncoder(TINY_PACK_NAME, root=face_root, det_size=(100, 100))
    with pytest.raises(ValueError, match="det_thresh"):
        FaceEncoder(TINY_PACK_NAME, root=face_root, det_thresh=1.5)
    for bad in (np.zeros((4, 4, 3, 2), np.uint8), np.zeros((0, 5, 3), np.uint8), np.full((8, 8), np.nan), "x.png"):
        with pytest.raises(ImageInputError):
            encoder.analyze(bad)
    gray = draw_tiny_face(canvas(), (200, 100, 300, 200))[..., 0]
    assert encoder.analyze(gray).num_faces == 1


def test_draw_tiny_face_copies_and_validates() -> None:
    image = canvas(64, 64, 200)
    out = draw_tiny_face(image, (16, 16, 48, 48), seed=5)
    assert (image == 200).all() and out.shape == image.shape and out.dtype == np.uint8
    assert out[16:48, 16:48].mean(axis=2).min() >= 170 and (out[0:16, 0:16] < 50).any()
    assert not np.array_equal(out, draw_tiny_face(image, (16, 16, 48, 48), seed=6))
    with pytest.raises(ValueError):
        draw_tiny_face(image, (10, 10, 10, 20))
    with pytest.raises(ValueError):
        draw_tiny_face(image.astype(np.float32), (0, 0, 8, 8))


def test_arcface_identity_score_is_monotonic() -> None:
    cos = [-1.0, -0.2, 0.0, 0.3, 0.75, 1.0, 1.2]
    scores = [arcface_identity_score(c) for c in cos]
    assert scores == [0.0, 0.0, 0.0, pytest.approx(30.0), 75.0, 100.0, 100.0]
    assert scores == sorted(scores)
    assert math.isnan(arcface_identity_score(float("nan")))


def test_tiny_pack_is_deterministic(tmp_path: Path, face_root: Path) -> None:
    again = write_tiny_face_pack(tmp_path, seed=0)
    first = face_root / "models" / TINY_PACK_NAME
    for name in ("det_tiny.onnx", "rec_tiny.onnx"):
        assert (again / name).read_bytes() == (first / name).read_bytes()
    other = write_tiny_face_pack(tmp_path, name="other", seed=1)
    assert (other / "rec_tiny.onnx").read_bytes() != (first / "rec_tiny.onnx").read_bytes()
    assert os.path.basename(other) == "other"
