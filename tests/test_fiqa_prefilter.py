"""The landmark pre-filter: features, the forest in ONNX (same numbers as scikit-learn), pickles refused,
``fiqa prefilter`` commands and ``feval score --prefilter``."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from feval_core.cli import main
from feval_core.errors import CheckpointError, ConfigError
from feval_core.fiqa.landmarks import FEATURES_5, TEMPLATE, feature_names, landmark_features
from feval_core.fiqa.prefilter import LandmarkPrefilter, PrefilterConfig, fit_forest
from feval_core.testing.mrfiqa import write_level_set


def _face(scale=1.0, angle=0.0, shift=(0.0, 0.0)):
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    pts = (TEMPLATE - 56) @ np.array([[c, s], [-s, c]]) * scale + 56 + np.array(shift)
    box = np.array([pts[:, 0].min() - 20, pts[:, 1].min() - 30, pts[:, 0].max() + 20, pts[:, 1].max() + 20])
    return pts, box


def test_features_are_normalised_by_similarity_and_iod() -> None:
    pts, box = _face()
    moved = _face(scale=2.0, angle=20.0, shift=(30, -10))
    f = landmark_features(np.stack([pts, moved[0]]), np.stack([box, box]), np.array([0.9, 0.9]))
    names = list(FEATURES_5)
    assert f.shape == (2, len(FEATURES_5))
    assert f[0, names.index("roll_deg")] == pytest.approx(0, abs=1e-3)
    assert f[1, names.index("roll_deg")] == pytest.approx(20, abs=1e-3)
    assert f[1, names.index("scale_log_iod")] - f[0, names.index("scale_log_iod")] == pytest.approx(np.log(2), abs=1e-4)
    for k in ("fit_rms", "yaw_nose", "eye_mouth", "mouth_width", "sym_eyes_nose", "res_nose_x"):
        assert f[0, names.index(k)] == pytest.approx(f[1, names.index(k)], abs=1e-4), k  # similarity-invariant
    turned = pts.copy()
    turned[2, 0] += 8  # the nose moves sideways as the head turns
    g = landmark_features(turned[None], box[None], np.array([0.9]))
    assert g[0, names.index("yaw_nose")] == pytest.approx(8 / np.linalg.norm(TEMPLATE[1] - TEMPLATE[0]), abs=1e-3)
    assert g[0, names.index("sym_eyes_nose")] > 0.1


def test_106_point_features_measure_openness() -> None:
    pts, box = _face()
    lmk = np.zeros((2, 106, 2))
    t = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    for n, openness in enumerate((0.1, 0.4)):
        lmk[n, 33:43] = np.stack([40 + 6 * np.cos(t), 52 + 6 * openness * np.sin(t)], 1)
        lmk[n, 87:97] = np.stack([73 + 6 * np.cos(t), 52 + 6 * 0.3 * np.sin(t)], 1)
        lmk[n, 52:72] = np.stack([56 + 15 * np.cos(np.linspace(0, 2 * np.pi, 20, endpoint=False)),
                                  92 + 15 * openness * np.sin(np.linspace(0, 2 * np.pi, 20, endpoint=False))], 1)
        lmk[n, 0:33] = np.stack([56 + 40 * np.cos(np.linspace(0, np.pi, 33)), 60 + 40 * np.sin(np.linspace(0, np.pi,
                                                                                                              33))], 1)
    f = landmark_features(np.stack([pts, pts]), np.stack([box, box]), np.ones(2), lmk)
    names = list(feature_names(106))
    assert f[:, names.index("eye_open_l")] == pytest.approx([0.1, 0.4], abs=0.02)
    assert f[:, names.index("eye_open_r")] == pytest.approx([0.3, 0.3], abs=0.02)
    assert f[:, names.index("mouth_open")] == pytest.approx([0.1, 0.4], abs=0.02)
    assert f[0, names.index("contour_sym")] < 0.05


def test_the_onnx_forest_gives_scikit_learns_numbers() -> None:
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, len(FEATURES_5))).astype(np.float32)
    y = 50 + 20 * x[:, 0] - 10 * x[:, 3] ** 2 + rng.normal(0, 2, 300)
    cfg = PrefilterConfig(n_estimators=20, max_depth=6)
    onnx_bytes = fit_forest(x, y, cfg)
    ref = RandomForestRegressor(n_estimators=20, max_depth=6, min_samples_leaf=3, random_state=0).fit(x, y)
    ours = LandmarkPrefilter(cfg, onnx_bytes).predict(x)
    assert np.allclose(ours, ref.predict(x), atol=1e-3)
    assert cfg.heldout_srcc > 0.8 and cfg.train_faces == 300


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_fiqa: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pf")
    write_level_set(root / "set", identities=20, per_identity=8, seed=2)
    pack = ["--face-pack", "tiny_face", "--face-root", str(tiny_fiqa / "face_pack"), "--det-size", "128"]
    main(["fiqa", "label", str(root / "set"), "--out", str(root / "labels.jsonl"), "--fit-weights"] + pack)
    assert main(["fiqa", "prefilter", "train", "--labels", str(root / "labels.jsonl"), "--out", str(root / "pf"),
                 "--trees", "30", "--points", "5"] + pack) == 0
    return {"root": root, "set": root / "set", "labels": root / "labels.jsonl", "pf": root / "pf"}


def test_prefilter_learns_the_labels_and_scores_images(trained, capsys) -> None:
    cfg = json.loads((trained["pf"] / "prefilter_config.json").read_text())
    assert {p.name for p in trained["pf"].iterdir()} == {"prefilter_config.json", "forest.onnx"}
    assert cfg["heldout_srcc"] > 0.5 and cfg["label"] == "mr_label"
    capsys.readouterr()
    assert main(["fiqa", "prefilter", "score", str(trained["set"] / "id_00000"), "--model", str(trained["pf"]),
                 "--threshold", "50"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 8 and all(r["passed"] == (r["prefilter"] >= 50) for r in rows if r["prefilter"] is not None)


def test_a_planted_pickle_is_refused_and_never_loaded(trained, tmp_path, monkeypatch) -> None:
    folder = tmp_path / "pf"
    shutil.copytree(trained["pf"], folder)

    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("the pickle was unpickled",))

    (folder / "forest.pkl").write_bytes(pickle.dumps(Boom()))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle.load called"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle.loads called"))
    with pytest.raises(CheckpointError, match="forest.pkl.*never loads pickled"):
        LandmarkPrefilter.from_pretrained(folder, load_faces=False)
    (folder / "forest.pkl").rename(folder / "forest.joblib")
    assert main(["fiqa", "prefilter", "score", str(trained["set"] / "id_00000"), "--model", str(folder)]) == 2
    (folder / "forest.joblib").unlink()
    (folder / "forest.onnx").unlink()
    with pytest.raises(CheckpointError, match="forest.onnx"):
        LandmarkPrefilter.from_pretrained(folder, load_faces=False)


def test_score_with_prefilter_skips_the_lmm_for_faces_under_the_threshold(trained, tiny_ckpt, tiny_fiqa,
                                                                          tmp_path) -> None:
    imgs = trained["set"] / "id_00001"
    pf = LandmarkPrefilter.from_pretrained(trained["pf"])
    values = {Path(n).name: float(v) for n, v in zip(*(lambda r: (r.names, r.values))(pf.score(str(imgs))))}
    t = float(np.median(list(values.values())))
    out = tmp_path / "s.jsonl"
    args = ["score", str(imgs), "--model", str(tiny_ckpt), "--face-root", str(tiny_fiqa / "face_pack"),
            "--prefilter-model", str(trained["pf"]), "--out", str(out)]
    assert main(args + ["--prefilter", str(t)]) == 0
    rows = {Path(r["image"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(rows) == 8
    for name, r in rows.items():
        assert r["prefilter"] == pytest.approx(values[name], abs=1e-2)
        if values[name] < t:
            assert r["quality"] is None and "skipped: pre-filter" in r["warnings"][0]
        else:
            assert r["quality"] is not None and not any("skipped" in w for w in r.get("warnings", []))
    assert 0 < sum(values[n] < t for n in rows) < 8


def test_quick_check_node(trained, tmp_path_factory) -> None:
    import torch
    from PIL import Image

    from tests.comfy_stub import install, load_pack, node_classes

    base = tmp_path_factory.mktemp("ComfyUI")
    install(base)
    shutil.copytree(trained["pf"], base / "models" / "feval" / "quick")
    node = node_classes(load_pack())["FEvalFaceQuickCheck"]
    assert "quick" in [i for i in node.GET_SCHEMA().inputs if i.id == "prefilter"][0].options
    files = sorted((trained["set"] / "id_00003").glob("*.png"))
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files] + [np.full((128, 128, 3), 20, np.uint8)]
    batch = torch.from_numpy(np.stack(arrays)).float() / 255
    expected = LandmarkPrefilter.from_pretrained(trained["pf"]).score([str(f) for f in files]).values
    t = float(np.median(expected))
    values, passed, report = node.execute(batch, "quick", t).args[:3]
    assert np.allclose(values[:-1], expected, atol=1e-3) and np.isnan(values[-1]) and "no face" in report
    assert passed == ",".join(str(i) for i, v in enumerate(expected) if v >= t)
    with pytest.raises(ValueError, match="not a path"):
        node.execute(batch, "../outside", 40.0)


def _write_tiny_106_model(path: Path) -> np.ndarray:
    """A tiny ONNX 106-point landmark model (192 x 192 input, 212 outputs) that answers a fixed mean shape."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    t = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    shape = np.zeros((106, 2))
    shape[0:33] = np.stack([0.6 * np.cos(np.linspace(0, np.pi, 33)), 0.6 * np.sin(np.linspace(0, np.pi, 33))], 1)
    shape[33:43] = np.stack([-0.3 + 0.1 * np.cos(t), -0.2 + 0.03 * np.sin(t)], 1)
    shape[87:97] = np.stack([0.3 + 0.1 * np.cos(t), -0.2 + 0.03 * np.sin(t)], 1)
    shape[52:72] = np.stack([0.2 * np.cos(np.linspace(0, 2 * np.pi, 20)), 0.35 + 0.05 * np.sin(
        np.linspace(0, 2 * np.pi, 20))], 1)
    nodes = [helper.make_node("ReduceMean", ["data"], ["m"], keepdims=0, name="rm"),
             helper.make_node("Mul", ["m", "zero"], ["z"], name="times_zero"),
             helper.make_node("Add", ["z", "shape"], ["fc1"], name="plus_shape")]
    graph = helper.make_graph(nodes, "tiny_lmk", [helper.make_tensor_value_info("data", TensorProto.FLOAT,
                                                                               [1, 3, 192, 192])],
                              [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 212])],
                              [numpy_helper.from_array(np.array(0, np.float32), "zero"),
                               numpy_helper.from_array(shape.reshape(1, 212).astype(np.float32), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return shape


def test_106_point_prefilter_uses_the_packs_landmark_model(trained, tmp_path) -> None:
    from feval_core.faces.encoder import FaceEncoder
    from feval_core.faces.landmark_model import find_landmark_model
    from feval_core.fiqa.landmarks import detect_faces
    from feval_core.fiqa.prefilter import train_prefilter
    from feval_core.model.config import FaceEncoderConfig
    from feval_core.testing.facepack import write_tiny_face_pack

    write_tiny_face_pack(tmp_path / "packs", name="tiny_106")
    assert find_landmark_model(tmp_path / "packs" / "models" / "tiny_106") is None
    _write_tiny_106_model(tmp_path / "packs" / "models" / "tiny_106" / "lmk106_tiny.onnx")
    enc = FaceEncoder("tiny_106", root=tmp_path / "packs", det_size=(128, 128))
    lmk = find_landmark_model(enc.pack_dir)
    assert lmk is not None and lmk.taskname == "landmark_2d_106"
    from PIL import Image

    image = np.asarray(Image.open(trained["set"] / "id_00000" / "000.png").convert("RGB"))
    found = detect_faces(enc, [image], lmk)
    box = found.bbox[0]
    centre, side = (box[:2] + box[2:]) / 2, max(box[2:] - box[:2]) * 1.5  # insightface's crop: 1.5 x the box
    assert np.allclose(found.lmk106[0, 0], centre + np.array([0.6, 0.0]) * side / 2, atol=1.5)
    face = FaceEncoderConfig(pack="tiny_106", root=str(tmp_path / "packs"), det_size=128)
    pf = train_prefilter(trained["labels"], tmp_path / "pf106", points=106, face=face, n_estimators=10)
    assert pf.config.features[-4:] == ["eye_open_l", "eye_open_r", "mouth_open", "contour_sym"]
    res = LandmarkPrefilter.from_pretrained(tmp_path / "pf106").score([image])
    assert np.isfinite(res.values).all()
    write_tiny_face_pack(tmp_path / "packs", name="plain")
    with pytest.raises(ConfigError, match="106-point landmark model"):
        train_prefilter(trained["labels"], tmp_path / "no", points=106, face=FaceEncoderConfig(
            pack="plain", root=str(tmp_path / "packs"), det_size=128))
