"""One face pack per process: F-Eval, ViT-FIQA and the pre-filter on the same pack and settings share one
FaceEncoder and one set of ONNX Runtime sessions (faces/registry.py); other settings get their own; the last user
gone frees it; the 106-point model is found with one session, the landmark model's own."""

from __future__ import annotations

import gc
import shutil
import threading
import weakref
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import face_image
from tests.test_memory_release import no_gc


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """File name -> ONNX Runtime sessions created from it (insightface's sessions subclass InferenceSession)."""
    import onnxruntime

    created: Counter = Counter()
    original = onnxruntime.InferenceSession.__init__

    def counting(self, path_or_bytes, *args, **kwargs):
        created[Path(path_or_bytes).name if isinstance(path_or_bytes, (str, Path)) else "<bytes>"] += 1
        original(self, path_or_bytes, *args, **kwargs)

    monkeypatch.setattr(onnxruntime.InferenceSession, "__init__", counting)
    return created


@pytest.fixture
def root(tmp_path: Path, tiny_fiqa: Path) -> Path:
    """A fresh copy of the tiny pack: no encoder of another test is registered for it."""
    shutil.copytree(tiny_fiqa / "face_pack", tmp_path / "packs")
    return tmp_path / "packs"


def _prefilter(folder: Path, root: Path, points: int = 5) -> Path:
    from feval_core.fiqa.landmarks import feature_names
    from feval_core.fiqa.prefilter import LandmarkPrefilter, PrefilterConfig, fit_forest
    from feval_core.model.config import FaceEncoderConfig

    cfg = PrefilterConfig(points=points, n_estimators=3, max_depth=3, min_samples_leaf=1,
                          face=FaceEncoderConfig(pack="tiny_face", root=str(root), det_size=128))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, len(feature_names(points)))).astype(np.float32)
    onnx_bytes = fit_forest(x, rng.uniform(0, 100, 40), cfg)
    LandmarkPrefilter(cfg, onnx_bytes).save_pretrained(folder, onnx_bytes)
    return folder


def test_scorers_and_prefilter_share_one_encoder_and_one_set_of_sessions(sessions, root, tiny_ckpt, tiny_fiqa,
                                                                         tmp_path) -> None:
    from feval_core import FEvalScorer
    from feval_core.faces.encoder import FaceEncoder
    from feval_core.fiqa.prefilter import LandmarkPrefilter
    from feval_core.fiqa.scorer import FIQAScorer

    pf_dir = _prefilter(tmp_path / "pf", root)
    sessions.clear()
    feval = FEvalScorer.from_pretrained(tiny_ckpt, device="cpu", face_root=root)
    fiqa = FIQAScorer.from_pretrained(tiny_fiqa, device="cpu", face_root=root)
    pf = LandmarkPrefilter.from_pretrained(pf_dir)
    assert feval.face_encoder is fiqa.face_encoder is pf.face_encoder
    pack = {p.name for p in (root / "models" / "tiny_face").glob("*.onnx")}
    assert {name: sessions[name] for name in pack} == {name: 1 for name in pack}  # not 3 of each

    # the same numbers as with encoders of their own
    paths = []
    for i, box in enumerate([(32, 32, 96, 96), (20, 24, 100, 104), None]):
        image = face_image(i, box=box) if box else np.full((128, 128, 3), 20, np.uint8)
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image).save(paths[-1])
    own = FaceEncoder("tiny_face", root=root, det_size=(128, 128))
    alone = FIQAScorer(fiqa.model, own, device="cpu").score(paths)
    assert fiqa.score(paths).to_records() == alone.to_records()
    own_pf = LandmarkPrefilter(pf.config, (pf_dir / "forest.onnx").read_bytes(), own)
    assert np.array_equal(pf.score(paths).values, own_pf.score(paths).values, equal_nan=True)


def test_other_settings_get_their_own_encoder_and_the_same_ones_share(root) -> None:
    from feval_core.faces.registry import encoder_key, get_face_encoder

    a = get_face_encoder("tiny_face", root=root, det_size=(128, 128))
    assert get_face_encoder("tiny_face", root=root / "models" / "..", det_size=(128, 128)) is a  # resolved folder
    assert get_face_encoder(str(root / "models" / "tiny_face"), det_size=(128, 128)) is a  # an absolute pack folder
    b = get_face_encoder("tiny_face", root=root, det_size=(160, 160))
    c = get_face_encoder("tiny_face", root=root, det_size=(128, 128), det_thresh=0.6)
    assert len({id(a), id(b), id(c)}) == 3 and b.det_size == (160, 160) and c.det_thresh == 0.6
    assert encoder_key("tiny_face", root, "cpu", (128, 128), 0.5) == (a.detector_key[0], ("CPUExecutionProvider",),
                                                                      (128, 128), 0.5)
    get_face_encoder("tiny_face", root=root, det_size=(128, 128), sessions=7)
    assert a.sessions == 7  # raised for every user, never lowered
    get_face_encoder("tiny_face", root=root, det_size=(128, 128), sessions=2)
    assert a.sessions == 7


def test_threads_asking_at_once_load_the_pack_once(sessions, root) -> None:
    from feval_core.faces.registry import get_face_encoder

    got, start = [], threading.Barrier(4)

    def ask() -> None:
        start.wait()
        got.append(get_face_encoder("tiny_face", root=root, det_size=(128, 128)))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and all(e is got[0] for e in got)
    assert sorted(sessions.values()) == [1, 1]  # detector and recognizer, once


def test_the_encoder_is_freed_when_its_last_user_goes(root, tiny_ckpt, tiny_fiqa) -> None:
    from feval_core import FEvalScorer
    from feval_core.faces.registry import get_face_encoder, shared_encoders
    from feval_core.fiqa.scorer import FIQAScorer

    with no_gc():
        feval = FEvalScorer.from_pretrained(tiny_ckpt, device="cpu", face_root=root)
        fiqa = FIQAScorer.from_pretrained(tiny_fiqa, device="cpu", face_root=root)
        feval.workers = 2
        feval.score(np.stack([face_image(0), face_image(1)]), dims="quality", batch_size=2)
        encoder = weakref.ref(feval.face_encoder)
        assert encoder() is fiqa.face_encoder
        del feval
        assert encoder() is not None, "ViT-FIQA still uses the pack"
        del fiqa
        assert encoder() is None, "the shared pack outlived its last user"
        assert all(e.pack_dir.parent.parent != root for e in shared_encoders())
        again = get_face_encoder("tiny_face", root=root, det_size=(128, 128))  # loaded afresh
        assert again.detections == 0
    gc.collect()


def test_106_landmarks_upgrade_the_shared_encoder_in_place(sessions, root, tmp_path) -> None:
    from feval_core.faces.registry import get_face_encoder
    from feval_core.fiqa.prefilter import LandmarkPrefilter
    from tests.test_fiqa_prefilter import _write_tiny_106_model

    _write_tiny_106_model(root / "models" / "tiny_face" / "lmk106_tiny.onnx")
    plain = get_face_encoder("tiny_face", root=root, det_size=(128, 128))
    assert plain.landmark_model is None and plain.analyze(face_image(0)).landmarks is None
    pf = LandmarkPrefilter.from_pretrained(_prefilter(tmp_path / "pf106", root, points=106))
    assert pf.face_encoder is plain and pf.landmark_model is plain.landmark_model is not None
    assert plain.analyze(face_image(0)).landmarks.shape == (106, 2)
    assert sessions["lmk106_tiny.onnx"] == 2  # FaceAnalysis opens every file once; the landmark model once more


def test_landmark_model_is_found_with_one_session(sessions, root, monkeypatch) -> None:
    from feval_core.faces import landmark_model
    from feval_core.faces.landmark_model import find_landmark_model
    from tests.test_fiqa_prefilter import _write_tiny_106_model

    pack = root / "models" / "tiny_face"
    assert find_landmark_model(pack) is None and not sessions  # no session for the detector or the recognizer
    _write_tiny_106_model(pack / "zz_points.onnx")  # found by shape, whatever its name
    found = find_landmark_model(pack)
    assert found is not None and Path(found.model_file).name == "zz_points.onnx"
    assert dict(sessions) == {"zz_points.onnx": 1}
    monkeypatch.setattr(landmark_model, "MAX_LANDMARK_BYTES", 10)  # a large file without a landmark name: not read
    assert find_landmark_model(pack) is None
    (pack / "zz_points.onnx").rename(pack / "2d106det.onnx")  # a landmark name is read whatever its size
    assert find_landmark_model(pack) is not None
