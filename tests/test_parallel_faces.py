"""Face detection in parallel: each thread its own ONNX sessions, same answers; the real-size random-weight pack."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from feval_core.faces.encoder import FaceEncoder
from feval_core.testing.facepack import draw_tiny_face, write_tiny_face_pack
from feval_core.testing.facepack_sized import pack_macs, write_sized_face_pack


@pytest.fixture(scope="module")
def packs(tmp_path_factory):
    root = tmp_path_factory.mktemp("packs")
    write_tiny_face_pack(root)
    write_sized_face_pack(root, scale=0.125)
    return root


def _images(n: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        side = int(rng.integers(40, 90))
        x, y = (int(v) for v in rng.integers(40, 216 - side, size=2))
        out.append(draw_tiny_face(np.full((256, 256, 3), 20, np.uint8), (x, y, x + side, y + side), seed=i))
    return out


def test_threads_hold_their_own_sessions_and_wait_when_all_are_busy(packs):
    enc = FaceEncoder("tiny_face", root=packs, det_size=(256, 256), sessions=2, threads=1)
    first, second = enc._acquire(), enc._acquire()
    assert first is not second and enc.loaded_sessions == 2
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(enc._acquire()))
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive() and not got, "a third caller must wait while both sessions are busy"
    enc._release(first)
    waiter.join(5)
    assert got == [first] and enc.loaded_sessions == 2
    with pytest.raises(ValueError, match="sessions must be a positive integer"):
        FaceEncoder("tiny_face", root=packs, sessions=0)


def test_the_scorer_lets_each_of_its_workers_detect_at_once(packs):
    enc = FaceEncoder("tiny_face", root=packs, det_size=(256, 256), sessions=1)
    enc.allow_sessions(3)
    held = [enc._acquire() for _ in range(3)]
    assert len({id(a) for a in held}) == 3 and enc.sessions == 3
    enc.allow_sessions(2)
    assert enc.sessions == 3, "the limit is never lowered under threads that hold sessions"


def test_parallel_analyze_equals_serial_and_uses_several_sessions(packs):
    images = _images()
    serial = FaceEncoder("tiny_face", root=packs, det_size=(256, 256), sessions=1)
    expected = [serial.analyze(im) for im in images]
    parallel = FaceEncoder("tiny_face", root=packs, det_size=(256, 256), sessions=3, threads=1)
    start = threading.Barrier(3)

    def run(k: int):
        start.wait()  # three threads call analyze at the same moment
        return [parallel.analyze(im) for im in images[k::3]]

    with ThreadPoolExecutor(3) as pool:
        parts = list(pool.map(run, range(3)))
    assert parallel.loaded_sessions >= 2, "concurrent callers must get their own sessions"
    got = [None] * len(images)
    for k, part in enumerate(parts):
        got[k::3] = part
    for a, b in zip(got, expected):
        assert a.num_faces == b.num_faces == 1
        np.testing.assert_allclose(a.bbox, b.bbox, atol=1e-4)
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-5)


def test_sized_pack_has_the_real_networks_compute():
    macs = pack_macs(1.0)
    assert macs["detector"] == pytest.approx(10.0e9, rel=0.05), "SCRFD-10G: ~10 G multiply-adds at 640x480"
    assert macs["recognizer"] == pytest.approx(6.3e9, rel=0.05), "iResNet-50: ~6.3 G multiply-adds per face"


def test_sized_pack_finds_the_faces_the_tiny_pack_finds(packs):
    tiny = FaceEncoder("tiny_face", root=packs, det_size=(256, 256))
    sized = FaceEncoder("sized_face", root=packs, det_size=(256, 256))
    for image in _images(3) + [np.full((256, 256, 3), 20, np.uint8)]:
        a, b = sized.analyze(image), tiny.analyze(image)
        assert a.num_faces == b.num_faces
        if b.has_face:
            np.testing.assert_allclose(a.bbox, b.bbox, atol=1.0)
            assert a.embedding.shape == (512,) and np.isfinite(a.embedding).all()
    with pytest.raises(ValueError, match="scale must be in"):
        write_sized_face_pack(packs, "bad", scale=2.0)
