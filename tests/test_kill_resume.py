"""`feval score --out` killed with SIGKILL at several moments, then re-run: nothing lost, nothing twice.

A real ``python -m feval_core.cli score`` subprocess scores a folder one image at a time; the test kills it
right after start, after a few rows, and half-way through a re-run, then re-runs the same command to the
end. The results file must then hold exactly one complete, valid JSON row per input, equal to what an
uninterrupted run gives. A property test then cuts a results file at every kind of byte offset (what a
kill mid-``write``, a full disk or a power loss can leave) and checks that resuming still adds up.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from feval_core.cli import main
from feval_core.dimensions import DIMENSIONS
from feval_core.inputs.results import ResultsWriter, read_results

N_IMAGES = 24
REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 240  # per run; a hang fails the test instead of blocking the suite


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    from tests.conftest import face_image

    d = tmp_path_factory.mktemp("kill_imgs")
    for i in range(N_IMAGES):
        Image.fromarray(face_image(i, size=64)).save(d / f"img_{i:03d}.png")
    return d


def _command(image_dir: Path, ckpt: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "feval_core.cli", "score", str(image_dir), "--model", str(ckpt), "--out", str(out),
            "--batch-size", "1", "--device", "cpu", "--dims", "quality,authenticity"]


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with log.open("wb") as err:  # a file, not a pipe: a full pipe would stall the child
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)


def _complete_lines(out: Path) -> int:
    return out.read_bytes().count(b"\n") if out.exists() else 0


def _kill_when(proc: subprocess.Popen, out: Path, rows_at_least: int, log: Path) -> None:
    """SIGKILL ``proc`` as soon as ``out`` has that many complete rows."""
    deadline = time.monotonic() + DEADLINE_S
    while _complete_lines(out) < rows_at_least:
        if proc.poll() is not None:
            err = log.read_text(errors="replace")
            pytest.fail(f"the run ended (code {proc.returncode}) before writing {rows_at_least} rows:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {rows_at_least} rows within {DEADLINE_S}s")
        time.sleep(0.005)
    proc.kill()
    proc.wait()


def _complete_part(out: Path) -> bytes:
    data = out.read_bytes() if out.exists() else b""
    return data[: data.rfind(b"\n") + 1]


def _check_partial(out: Path, names: set[str]) -> list[dict]:
    """After a kill: complete lines are valid rows of distinct inputs; only the last line may be torn."""
    if not out.exists():
        return []
    data = out.read_bytes()
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    rows = [json.loads(line) for line in complete]
    seen = [r["image"] for r in rows]
    assert len(seen) == len(set(seen)), "a row was written twice"
    assert set(seen) <= names
    if tail:
        with pytest.raises(ValueError):
            json.loads(tail)  # a torn line is incomplete, never a valid shorter row
    return rows


def test_sigkill_at_any_moment_then_rerun_finishes_with_one_row_per_input(tiny_ckpt, tiny_scorer, image_dir,
                                                                            tmp_path):
    out = tmp_path / "results.jsonl"
    cmd = _command(image_dir, tiny_ckpt, out)
    names = {str(p) for p in image_dir.iterdir()}

    log = tmp_path / "stderr.txt"

    # 1. right after start (while Python is still importing)
    proc = _start(cmd, log)
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    _check_partial(out, names)

    # 2. after a few rows
    proc = _start(cmd, log)
    _kill_when(proc, out, 3, log)
    first = len(_check_partial(out, names))
    assert 3 <= first < N_IMAGES
    kept = _complete_part(out)

    # 3. half-way through the re-run
    proc = _start(cmd, log)
    _kill_when(proc, out, max(first + 2, N_IMAGES // 2), log)
    second = len(_check_partial(out, names))
    assert first < second < N_IMAGES, "the re-run must have resumed and added rows before it was killed"
    assert out.read_bytes().startswith(kept), "rows already written are kept as they were"
    kept = _complete_part(out)

    # 4. the same command again, to the end
    proc = _start(cmd, log)
    try:
        proc.wait(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the final re-run did not finish")
    assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]

    data = out.read_bytes()
    assert data.startswith(kept), "the final run only appended: nothing was scored twice"
    assert data.endswith(b"\n") and data.count(b"\n") == N_IMAGES
    rows = [json.loads(line) for line in data.splitlines()]
    assert sorted(r["image"] for r in rows) == sorted(names), "exactly one row per input"
    for r in rows:
        assert r["error"] is None and r["faces"] == 1
        assert set(DIMENSIONS) <= set(r)
        assert all(isinstance(r[d], float) and math.isfinite(r[d]) for d in ("quality", "authenticity"))

    # the pieces add up to what one uninterrupted scoring gives
    paths = sorted(names)
    ref = dict(zip(paths, tiny_scorer.score(paths, dims=["quality", "authenticity"]).to_records()))
    for r in rows:
        for d in DIMENSIONS:
            a, b = r[d], ref[r["image"]][d]
            assert (a is None and b is None) or abs(a - b) <= 1e-3, (r["image"], d, a, b)

    # 5. once complete, the same command is a no-op
    assert main(cmd[3:]) == 0
    assert out.read_bytes() == data


# -- the results file, killed at every byte -------------------------------------------------------------------
NAMES = st.lists(st.text(max_size=12) | st.binary(min_size=1, max_size=12).map(os.fsdecode),  # undecodable too
                 min_size=1, max_size=8, unique=True)


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=NAMES, cut=st.floats(0, 1), error_every=st.integers(2, 5))
def test_results_file_cut_at_any_byte_resumes_to_one_row_each(tmp_path_factory, names, cut, error_every):
    """A crash can leave the file cut anywhere (a kill, a full disk, a power loss): resume still adds up."""
    rows = [{"image": n, "quality": round(i * 1.5, 4), "authenticity": None, "identity": None,
             "correspondence": None, "faces": i % 3, "error": "bad" if i % error_every == 0 else None}
            for i, n in enumerate(names)]
    path = tmp_path_factory.mktemp("res") / "r.jsonl"
    with ResultsWriter(path, fsync=False) as w:
        w.write(rows)
    data = path.read_bytes()
    data.decode("utf-8")  # always valid UTF-8, whatever the names
    path.write_bytes(data[: int(cut * len(data))])
    with ResultsWriter(path, fsync=False) as w:  # the re-run: repair, then score what is missing
        assert w.done <= set(names)
        w.write([r for r in rows if r["image"] not in w.done])
    again = read_results(path)
    assert sorted(again, key=lambda r: names.index(r["image"])) == rows
    assert path.read_bytes().count(b"\n") == len(rows) and path.read_bytes().endswith(b"\n")
