"""`feval score` / `feval make-tiny` as a user runs them: JSON Lines rows, error rows, resume, exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from feval_core.cli import main
from feval_core.inputs.results import ResultsWriter, read_results


@pytest.fixture()
def image_dir(tmp_path, faces) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    for name, arr in faces.items():
        Image.fromarray(arr).save(d / f"{name}.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (d / "notes.txt").write_text("not an image, and not an image extension")
    return d


def test_score_folder_writes_one_row_per_image_and_flags_failures(tiny_ckpt, image_dir, tmp_path):
    out = tmp_path / "res.jsonl"
    ref = image_dir / "a_moved.png"
    code = main(["score", str(image_dir), "--model", str(tiny_ckpt), "--prompt", "a woman", "--ref", str(ref),
                 "--out", str(out), "--batch-size", "2", "--device", "cpu"])
    assert code == 1, "a broken file among the inputs must make the exit status non-zero"
    rows = read_results(out)
    names = sorted(Path(r["image"]).name for r in rows)
    assert names == ["a.png", "a_moved.png", "b.png", "broken.jpg", "none.png"]
    by = {Path(r["image"]).name: r for r in rows}
    assert by["broken.jpg"]["error"] and by["broken.jpg"]["quality"] is None
    for n in ("a.png", "b.png"):
        r = by[n]
        assert r["error"] is None and r["faces"] == 1
        assert all(isinstance(r[d], float) for d in ("quality", "authenticity", "identity", "correspondence"))
    assert set(by["a.png"]) >= {"image", "quality", "authenticity", "identity", "correspondence", "faces", "error"}


def test_rerun_resumes_without_rescoring(tiny_ckpt, image_dir, tmp_path, monkeypatch):
    out = tmp_path / "res.jsonl"
    (image_dir / "broken.jpg").unlink()
    assert main(["score", str(image_dir), "--model", str(tiny_ckpt), "--out", str(out), "--device", "cpu"]) == 0
    first = out.read_bytes()

    import feval_core.scoring.scorer as scorer_mod

    def boom(*a, **k):
        raise AssertionError("nothing is left to score: the model must not even load")

    monkeypatch.setattr(scorer_mod.FEvalScorer, "from_pretrained", boom)
    assert main(["score", str(image_dir), "--model", str(tiny_ckpt), "--out", str(out), "--device", "cpu"]) == 0
    assert out.read_bytes() == first


def test_resume_after_torn_line_scores_only_the_rest(tiny_ckpt, image_dir, tmp_path):
    (image_dir / "broken.jpg").unlink()
    out = tmp_path / "res.jsonl"
    main(["score", str(image_dir), "--model", str(tiny_ckpt), "--out", str(out), "--device", "cpu"])
    lines = out.read_bytes().splitlines(keepends=True)
    # as if killed while writing the third row
    out.write_bytes(b"".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    assert main(["score", str(image_dir), "--model", str(tiny_ckpt), "--out", str(out), "--device", "cpu"]) == 0
    rows = read_results(out)
    assert len(rows) == 4 and len({r["image"] for r in rows}) == 4
    assert out.read_bytes().endswith(b"\n") and len(out.read_bytes().splitlines()) == 4


def test_writer_repairs_torn_tail(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_bytes(b'{"image": "a", "error": null}\n{"image": "b", "err')
    with ResultsWriter(p) as w:
        assert w.done == {"a"}
        w.write([{"image": "b", "error": None}])
    assert [r["image"] for r in read_results(p)] == ["a", "b"]


def test_no_images_is_a_usage_error(tiny_ckpt, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["score", str(empty), "--model", str(tiny_ckpt), "--device", "cpu"]) == 2


def test_stdout_rows_when_no_out_file(tiny_ckpt, image_dir, capsys):
    code = main(["score", str(image_dir / "a.png"), "--model", str(tiny_ckpt), "--dims", "quality", "--device", "cpu"])
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 1 and rows[0]["authenticity"] is None and isinstance(rows[0]["quality"], float)


def test_console_script_make_tiny_then_score(tmp_path, faces):
    """The README's main job, through a real subprocess."""
    ck = tmp_path / "tiny"
    r = subprocess.run([sys.executable, "-m", "feval_core.cli", "make-tiny", str(ck), "--family", "llava"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "MEANINGLESS" in r.stderr
    img = tmp_path / "face.png"
    Image.fromarray(faces["a"]).save(img)
    r = subprocess.run([sys.executable, "-m", "feval_core.cli", "score", str(img), "--model", str(ck),
                        "--prompt", "a woman", "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout.strip().splitlines()[-1])
    assert row["faces"] == 1 and row["identity"] is None and isinstance(row["correspondence"], float)
