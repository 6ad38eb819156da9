"""Usage errors are caught at the door: one line on stderr, exit status 2, and no model loaded.

Every case starts from a command line that is valid (real image, manifest, folders, a tiny checkpoint) and
changes ONE argument; the table says which and what the message must mention. A second table checks that
the valid command lines get past the checks (as far as loading the model, which is stubbed to fail).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import feval_core.train.loop as train_loop
from feval_core.cli import EXIT_USAGE, main
from feval_core.cli.checks import UsageError
from feval_core.model.lmm import FEvalModel
from feval_core.scoring.scorer import FEvalScorer

SCORE = ["score", "{img}", "--model", "{ckpt}", "--device", "cpu"]
EVAL = ["eval", "--model", "{ckpt}", "--manifest", "{manifest}", "--out", "{tmp}/eval", "--device", "cpu"]
BENCH = ["bench", "{bench}", "--model", "{ckpt}", "--out", "{tmp}/bench_out", "--device", "cpu"]
TRAIN = ["train", "--manifest", "{manifest}", "--base", "{backbone}", "--out", "{tmp}/run"]
SPLIT = ["split", "{manifest}", "--out", "{tmp}/splits"]
FACEQ = ["import-faceq", "{faceq}", "--out", "{tmp}/faceq.jsonl"]
TINY = ["make-tiny", "{tmp}/tiny"]
SERVE = ["serve", "--model", "{ckpt}", "--device", "cpu", "--port", "18000"]


def _set(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with ``flag``'s value replaced (or the option added)."""
    if flag in argv:
        i = argv.index(flag)
        return [*argv[:i + 1], value, *argv[i + 2:]]
    return [*argv, flag, value]


def _pos(argv: list[str], index: int, value: str) -> list[str]:
    """``argv`` with the positional argument at ``index`` replaced."""
    return [*argv[:index], value, *argv[index + 1:]]


BAD = [
    # -- score
    ("score-dims", _set(SCORE, "--dims", "quality,beauty"), "--dims quality,beauty: unknown dimension 'beauty'"),
    ("score-batch-size", _set(SCORE, "--batch-size", "0"), "--batch-size must be >= 1, got 0"),
    ("score-fps-image", _set(SCORE, "--fps", "24"), "--fps is the frame rate of video frame folders"),
    ("score-workers", _set(SCORE, "--workers", "-1"), "--workers must be >= 0, got -1"),
    ("score-out-folder", _set(SCORE, "--out", "{imgs}"), "is a folder; give a file name such as"),
    ("score-out-in-a-file", _set(SCORE, "--out", "{img}/r.jsonl"), "is a file"),
    ("score-device-unknown", _set(SCORE, "--device", "gpu"), "--device gpu: not a device; use cpu, cuda"),
    ("score-device-index", _set(SCORE, "--device", "cuda:99"), "--device cuda:99: this machine has no CUDA device 99"),
    ("score-model-missing", _set(SCORE, "--model", "{tmp}/no_such_ckpt"), "not a hub id like org/name"),
    ("score-model-relative", _set(SCORE, "--model", "./ckpts/nope"), "no such folder, and not a hub id"),
    ("score-model-deep-id", _set(SCORE, "--model", "org/name/extra"), "not a hub id like org/name"),
    ("score-model-file", _set(SCORE, "--model", "{img}"), "is a file; pass the model folder"),
    ("score-lq-missing", _set(SCORE, "--lq", "{tmp}/no_lq.png"), "no_lq.png: no such file; check the path"),
    ("score-question-empty", _set(SCORE, "--question", "  "), "--question is empty"),
    ("score-question-zero-shot", _set(_set(SCORE, "--model", "{backbone}"), "--question", "How natural is it?"),
     "needs a trained checkpoint"),
    ("score-model-not-ckpt", _set(SCORE, "--model", "{empty}"), "holds neither feval_config.json"),
    ("score-ref-missing", _set(SCORE, "--ref", "{tmp}/no_ref.png"), "--ref"),
    ("score-ref-folder", _set(SCORE, "--ref", "{imgs}"), "is a folder; give a file"),
    ("score-face-root", _set(SCORE, "--face-root", "{tmp}/no_faces"), "--face-root"),
    ("score-empty-folder", _pos(SCORE, 1, "{empty}"), "no images in this folder (looked for .bmp"),
    ("score-needs-recursive", _pos(SCORE, 1, "{nested}"), "its sub-folders have some: add --recursive"),
    # -- eval
    ("eval-manifest", _set(EVAL, "--manifest", "{tmp}/no.jsonl"), "--manifest"),
    ("eval-batch-size", _set(EVAL, "--batch-size", "0"), "--batch-size must be >= 1, got 0"),
    ("eval-device", _set(EVAL, "--device", "cuda:99"), "no CUDA device 99"),
    ("eval-dims", _set(EVAL, "--dims", "nope"), "unknown dimension 'nope'"),
    ("eval-model", _set(EVAL, "--model", "{tmp}/no_such_ckpt"), "--model"),
    ("eval-out-file", _set(EVAL, "--out", "{img}"), "is a file; give a folder"),
    ("eval-video-manifest", _set(EVAL, "--manifest", "{vmanifest}"), "is an image checkpoint but --manifest"),
    ("eval-split-image", _set(EVAL, "--split", "test"), "--split only applies to video manifests"),
    # -- bench
    ("bench-root-missing", _pos(BENCH, 1, "{tmp}/no_bench"), "no such folder; it should hold one folder of images"),
    ("bench-root-file", _pos(BENCH, 1, "{img}"), "is a file, not a folder"),
    ("bench-ref", _set(BENCH, "--ref", "{tmp}/no_ref.png"), "--ref"),
    ("bench-batch-size", _set(BENCH, "--batch-size", "-2"), "--batch-size must be >= 1, got -2"),
    ("bench-dims", _set(BENCH, "--dims", "nope"), "unknown dimension 'nope'"),
    ("bench-device", _set(BENCH, "--device", "tpu"), "--device tpu: not a device"),
    ("bench-model", _set(BENCH, "--model", "{tmp}/no_such_ckpt"), "--model"),
    # -- train
    ("train-manifest", _set(TRAIN, "--manifest", "{tmp}/no.jsonl"), "--manifest"),
    ("train-val-manifest", _set(TRAIN, "--val-manifest", "{tmp}/no_val.jsonl"), "--val-manifest"),
    ("train-manifest-folder", _set(TRAIN, "--manifest", "{imgs}"), "is a folder; give a file"),
    ("train-base", _set(TRAIN, "--base", "{tmp}/no_backbone"), "--base"),
    ("train-batch-size", _set(TRAIN, "--batch-size", "0"), "--batch-size must be a positive integer"),
    ("train-lr", _set(TRAIN, "--lr", "0"), "--lr must be"),
    ("train-val-fraction", _set(TRAIN, "--val-fraction", "1.5"), "--val-fraction must be in [0, 1)"),
    ("train-dims", _set(TRAIN, "--dims", "nope"), "unknown dimension 'nope'"),
    ("train-out-file", _set(TRAIN, "--out", "{img}"), "is a file; give a folder"),
    ("train-face-root", _set(TRAIN, "--face-root", "{tmp}/no_faces"), "--face-root"),
    ("train-resume-fresh", [*TRAIN, "--resume"], "start a new run without --resume"),
    ("train-mixed-manifest", _set(TRAIN, "--manifest", "{mixed}"), "mixes image rows (line 1) and video rows"),
    ("train-video-image-option", _set(_set(TRAIN, "--manifest", "{vmanifest}"), "--val-fraction", "0.2"),
     "--val-fraction applies only to image manifests"),
    ("train-image-video-option", _set(TRAIN, "--branches", "spatial"), "--branches applies only to video manifests"),
    ("train-video-no-temporal", _set(TRAIN, "--manifest", "{vmanifest}"), "a video manifest needs --temporal-model"),
    # -- split / import-faceq
    ("split-manifest", _pos(SPLIT, 1, "{tmp}/no.jsonl"), "no such file"),
    ("split-fractions-two", _set(SPLIT, "--fractions", "0.5,0.5"), "--fractions must be three numbers"),
    ("split-fractions-words", _set(SPLIT, "--fractions", "a,b,c"), "--fractions must be three numbers"),
    ("split-fractions-sum", _set(SPLIT, "--fractions", "0.5,0.5,0.5"), "--fractions must sum to 1"),
    ("split-out-file", _set(SPLIT, "--out", "{img}"), "is a file; give a folder"),
    ("faceq-root", _pos(FACEQ, 1, "{tmp}/no_faceq"), "no such folder"),
    ("faceq-out-folder", _set(FACEQ, "--out", "{imgs}"), "is a folder; give a file name such as"),
    ("faceq-out-in-a-file", _set(FACEQ, "--out", "{img}/faceq.jsonl"), "is a file"),
    # -- make-tiny
    ("tiny-out-file", _pos(TINY, 1, "{img}"), "is a file; give a folder"),
    ("tiny-seed", [*TINY, "--seed", "-1"], "--seed must be >= 0, got -1"),
    # -- serve (only bad arguments: valid ones would start a server)
    ("serve-model-missing", _set(SERVE, "--model", "{tmp}/no_such_ckpt"), "not a hub id like org/name"),
    ("serve-port", _set(SERVE, "--port", "80"), "--port must be 1024..65535, got 80"),
    ("serve-max-images", _set(SERVE, "--max-images", "0"), "--max-images must be >= 1, got 0"),
    ("serve-max-queue", _set(SERVE, "--max-queue", "0"), "--max-queue must be >= 1, got 0"),
    ("serve-device", _set(SERVE, "--device", "gpu"), "--device gpu: use cuda, cpu or auto"),
    ("serve-gpus", _set(SERVE, "--gpus", "two"), "--gpus must be a number >= 1 or auto, got two"),
    ("serve-timeout", _set(SERVE, "--timeout", "0"), "--timeout and --max-request-mb > 0"),
]

GOOD = [
    ("score-file", [*SCORE, "--prompt", "a woman", "--ref", "{img}", "--workers", "0", "--out", "{tmp}/r.jsonl"]),
    ("score-folder", _pos(SCORE, 1, "{imgs}")),
    ("score-recursive", [*_pos(SCORE, 1, "{nested}"), "--recursive", "--dims", "quality,id"]),
    ("score-missing-input", _pos(SCORE, 1, "{tmp}/no_such.png")),  # becomes an error row, not a usage error
    ("eval", [*EVAL, "--dims", "quality"]),
    ("bench", [*BENCH, "--ref", "{img}"]),
    ("train", [*TRAIN, "--val-manifest", "{manifest}", "--dims", "quality"]),
]


@pytest.fixture()
def paths(tmp_path: Path, tiny_ckpt: Path) -> dict[str, str]:
    """Real inputs for every command; each case breaks exactly one of them."""
    rng = np.random.default_rng(0)
    face = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    imgs = tmp_path / "imgs"
    nested = tmp_path / "nested" / "sub"
    bench = tmp_path / "benchroot" / "gen_a"
    for folder in (imgs, nested, bench, tmp_path / "empty", tmp_path / "faceq" / "images", tmp_path / "faceq" / "MOSs"):
        folder.mkdir(parents=True)
    for folder in (imgs, nested, bench):
        face.save(folder / "face.png")
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"image": "imgs/face.png", "task": "generation",
                                                         "mos": {"quality": 62.5}}) + "\n")
    video_row = json.dumps({"video": "clips/a.mp4", "mos": 50.0}) + "\n"
    (tmp_path / "videos.jsonl").write_text(video_row)
    (tmp_path / "mixed.jsonl").write_text((tmp_path / "manifest.jsonl").read_text() + video_row)
    return {"tmp": str(tmp_path), "ckpt": str(tiny_ckpt), "backbone": str(tiny_ckpt / "backbone"),
            "img": str(imgs / "face.png"), "imgs": str(imgs), "nested": str(nested.parent),
            "empty": str(tmp_path / "empty"), "manifest": str(tmp_path / "manifest.jsonl"),
            "bench": str(bench.parent), "faceq": str(tmp_path / "faceq"),
            "vmanifest": str(tmp_path / "videos.jsonl"), "mixed": str(tmp_path / "mixed.jsonl")}


@pytest.fixture()
def no_model(monkeypatch: pytest.MonkeyPatch, tiny_ckpt: Path) -> None:
    """Loading a scorer, building a model or starting training fails the test (tiny_ckpt is built first)."""
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("model loaded")

    monkeypatch.setattr(FEvalScorer, "from_pretrained", boom)
    monkeypatch.setattr(FEvalModel, "build", boom)
    monkeypatch.setattr(train_loop, "train", boom)


@contextlib.contextmanager
def _fresh_root_logging() -> Iterator[None]:
    """Let main()'s logging.basicConfig install its own stderr handler (bound to capsys), then put back
    pytest's handlers and level before the test ends."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        yield
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def _argv(template: list[str], paths: dict[str, str]) -> list[str]:
    return [a.format(**paths) for a in template]


@pytest.mark.parametrize("template, fragment", [pytest.param(t, f, id=i) for i, t, f in BAD])
def test_bad_argument_is_one_line_and_exit_2_before_any_model(template, fragment, paths, no_model, capsys):
    argv = _argv(template, paths)
    capsys.readouterr()
    with _fresh_root_logging():
        code = main(argv)
    err = capsys.readouterr().err
    assert code == EXIT_USAGE, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith("ERROR feval: "), lines[0]
    assert fragment.format(**paths) in lines[0], lines[0]


@pytest.mark.parametrize("template", [pytest.param(t, id=i) for i, t in GOOD])
def test_valid_arguments_get_past_the_checks(template, paths, no_model):
    with pytest.raises(AssertionError, match="model loaded"), _fresh_root_logging():
        main(_argv(template, paths))


def test_verbose_shows_the_usage_error_itself(paths, no_model):
    with pytest.raises(UsageError, match="--batch-size must be >= 1"), _fresh_root_logging():
        main(["-v", *_argv(_set(SCORE, "--batch-size", "0"), paths)])
