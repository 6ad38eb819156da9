"""``feval serve`` on localhost with the tiny checkpoint: 64 concurrent clients get exactly their own in-process
scores; every reward shape works remotely; limits answer at once; a stopped server gives a clear error, never a hang.

One server for the module (LitServe, CPU, one replica); the stop test runs last and stops it. Timing figures come
from ``benchmarks/serve.py``, not from here.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from feval_core.testing.server import run_clients, start_server
from reward import RemoteRewardError, RemoteScorer, feval_reward, remote_reward
from tests.conftest import face_image

pytest.importorskip("litserve", reason="the serve extra is part of the test extra; install it with .[test]")

TOKEN = "s3cret-test-token"
W = {"quality": 1.0, "authenticity": 1.0, "identity": 1.0, "correspondence": 1.0}
MAX_IMAGES = 8


@pytest.fixture(scope="module")
def server(tiny_ckpt):
    srv = start_server(tiny_ckpt, "--device", "cpu", "--max-batch-size", "8", "--batch-timeout", "0.02",
                       "--max-images", str(MAX_IMAGES), "--max-request-mb", "1", "--max-queue", "64",
                       "--token", TOKEN, "--timeout", "120")
    try:
        srv.wait_ready(timeout=300)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def pool() -> list[np.ndarray]:
    """16 distinct images: faces of several identities and places, and two without a face."""
    out = [face_image(s % 5, size=96, box=(8 + 3 * s, 10 + 2 * s, 60 + 2 * s, 70 + s)) for s in range(14)]
    return out + [np.full((96, 96, 3), 20, np.uint8), np.full((80, 120, 3), 200, np.uint8)]


def _client(url: str, **kw) -> RemoteScorer:
    return RemoteScorer(url, token=TOKEN, timeout=120, **kw)


def test_64_concurrent_clients_get_exactly_their_in_process_scores(server, tiny_scorer, pool, faces):
    """64 clients at once, one request each (an image of the pool with its own prompt): each gets its own row."""
    prompts = [f"prompt {k % 3}" for k in range(len(pool))]
    ref = faces["a"]
    local = tiny_scorer.score(pool, prompts=prompts, refs=ref)
    remote = _client(server.url)
    jobs = [i % len(pool) for i in range(64)]
    load = run_clients(lambda k: remote.score([pool[k]], prompts=prompts[k], refs=ref), jobs, 64, join_timeout=300)
    assert not load.errors, load.errors[:3]
    for k, got in zip(jobs, load.results):
        assert len(got) == 1, "each request answered once, with its own row"
        torch.testing.assert_close(got.scores[0], local.scores[k], atol=1e-3, rtol=0, equal_nan=True)
        assert got.missing[0] == local.missing[k] and got.faces[0] == local.faces[k]
        assert got.warnings[0] == local.warnings[k]
    assert local.faces[14] == 0 and local.missing[14]["identity"] == "no face in the image"


def test_every_reward_shape_works_remotely_and_a_lost_face_scores_lower(server, tiny_scorer, faces, monkeypatch):
    images = torch.from_numpy(np.stack([faces["a"], faces["none"]])).permute(0, 3, 1, 2).float() / 255.0
    ref = faces["a_moved"]
    rr = remote_reward(server.url, W, token=TOKEN)
    local = feval_reward(images, "a portrait", ref, W, tiny_scorer, return_dict=True)
    got = rr(images, "a portrait", ref, return_dict=True)
    torch.testing.assert_close(got["reward"], local["reward"], atol=1e-3, rtol=0)
    assert got["missing"] == local["missing"] and float(got["reward"][1]) < float(got["reward"][0])
    rewards, meta = rr.ddpo()(images, ("a portrait",) * 2, [{"ref": ref}] * 2)
    torch.testing.assert_close(rewards, local["reward"], atol=1e-3, rtol=0)
    scores, meta = rr.flow_grpo()(images, ["a portrait"] * 2, [{"ref": ref}] * 2, only_strict=True)
    np.testing.assert_allclose(scores["avg"], local["reward"].numpy() / 100, atol=1e-5)
    assert scores["avg"][1] < scores["avg"][0]
    monkeypatch.setenv("FEVAL_SERVE_TOKEN", TOKEN)
    by_url = feval_reward(images, "a portrait", ref, W, server.url)  # any shape takes the URL as its scorer
    torch.testing.assert_close(by_url, local["reward"], atol=1e-3, rtol=0)


def _post(url: str, body: bytes, token: str | None = TOKEN) -> tuple[int, dict, float]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(urllib.request.Request(url + "/predict", body, headers), timeout=120) as r:
            return r.status, json.loads(r.read()), time.perf_counter() - t0
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}"), time.perf_counter() - t0


def _png(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_limits_are_answered_at_once(server, faces):
    one = json.dumps({"images": [_png(faces["a"])], "dims": ["quality"]}).encode()
    status, doc, _ = _post(server.url, one, token="wrong")
    assert status == 401 and "token" in doc["detail"]
    with pytest.raises(RemoteRewardError, match="401"):
        RemoteScorer(server.url, token="wrong").score([faces["a"]])
    status, doc, _ = _post(server.url, b"x" * (2 * 2**20))
    assert status == 413 and "fewer images" in doc["detail"]
    too_many = json.dumps({"images": [_png(faces["a"])] * (MAX_IMAGES + 1)}).encode()
    status, doc, _ = _post(server.url, too_many)
    assert status == 200 and "1 to 8 images" in doc["error"]
    broken = json.dumps({"images": [_png(faces["a"]), "bm90IGFuIGltYWdl"], "dims": ["quality"]}).encode()
    status, doc, _ = _post(server.url, broken)
    assert status == 200 and doc["errors"][0] is None and "not a PNG/JPEG/WEBP image" in doc["errors"][1]
    assert doc["scores"][0][0] is not None, "one bad image does not stop the other"
    # overload: more requests in flight than --max-queue (64): the rest are refused at once, none hangs
    small = json.dumps({"images": [_png(faces["b"])], "dims": ["quality"]}).encode()
    load = run_clients(lambda _: _post(server.url, small), list(range(160)), 160, join_timeout=300)
    statuses = [r[0] for r in load.results]
    assert set(statuses) <= {200, 503} and statuses.count(503) > 0 and statuses.count(200) >= 1
    busy = [r[2] for r in load.results if r[0] == 503]
    served = [r[2] for r in load.results if r[0] == 200]
    assert max(busy) < max(served), "a refused request does not wait for the model"
    assert all("server busy" in r[1]["detail"] for r in load.results if r[0] == 503)


def test_a_server_stopped_mid_run_gives_clients_a_clear_error(server, faces):
    """Runs last: it stops the module's server while clients are scoring."""
    client = _client(server.url, retries=2, backoff=0.2)
    client.timeout = 8  # per try: a request the stopping server never answers fails after this
    outcomes: list[object] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                client.score([faces["a"], faces["b"]], prompts="a portrait")
                outcomes.append("ok")
            except RemoteRewardError as err:
                outcomes.append(err)
                return

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while outcomes.count("ok") < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert outcomes.count("ok") >= 4, "the clients were scoring before the stop"
    server.stop(timeout=5)  # SIGTERM, then SIGKILL: the clients must not hang either way
    for t in threads:
        t.join(timeout=120)
    stop.set()
    assert not any(t.is_alive() for t in threads), "a client hung on a stopped server"
    errors = [o for o in outcomes if isinstance(o, RemoteRewardError)]
    assert len(errors) == 4
    assert all("did not answer after 3 tries" in str(e) and "feval serve" in str(e) for e in errors), [
        str(e) for e in errors]  # once in a full run under load one error read otherwise: the messages say which
