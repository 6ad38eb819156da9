"""The bad-input corpus, end to end: every odd input has a stated behaviour, checked through the Python API
(``FEvalScorer.score``), the command line (``feval score``) and the reward (``reward.feval_reward``).

Behaviours (``expect``):

* ``score``  — scored like any image (``error`` is null, quality/authenticity are numbers); ``faces`` is the
  face count the tiny face pack must find, which shows the pixels survived the conversion;
* ``error``  — that input gets a row of its own with ``error`` matching ``match`` and no scores; the other
  inputs of the same call still score (the CLI exits with 1, the reward is ``nan_reward`` for that image);
* ``raises`` — the whole call raises before any image is decoded or any model runs (layouts that cannot be
  images, lists that do not line up).

The corpus is generated at test time (nothing binary is checked in). The pixel-level conversion of each
kind of input is tested in ``test_images.py``/``test_images_fuzz.py``; this file checks that the whole
pipeline gives each one the stated outcome.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from feval_core import DIMENSIONS, FEvalScorer
from feval_core.cli import main
from feval_core.errors import ImageInputError, InputMismatchError
from tests.conftest import face_image

Q, A, I, C = (DIMENSIONS.index(d) for d in ("quality", "authenticity", "identity", "correspondence"))
PROMPT = "a portrait of a smiling woman"


def _face(seed: int = 0, size: int = 96) -> np.ndarray:
    return face_image(seed, size=size)


def _encode(arr_or_img: Any, fmt: str, **kw: Any) -> bytes:
    im = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression bomb needs no more to be refused)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _many_faces() -> np.ndarray:
    """Four tiny-pack faces of different sizes and identities on one dark canvas."""
    from feval_core.testing.facepack import draw_tiny_face

    img = np.full((200, 200, 3), 20, dtype=np.uint8)

    img = draw_tiny_face(img, (10, 10, 100, 100), seed=0)  # the largest: the main face
    img = draw_tiny_face(img, (135, 15, 185, 65), seed=1)
    img = draw_tiny_face(img, (140, 140, 180, 180), seed=2)
    return draw_tiny_face(img, (20, 150, 60, 190), seed=3)


def _exif_rotated() -> bytes:
    """A JPEG stored sideways with EXIF Orientation=6 ("rotate 90 degrees clockwise to view")."""
    upright = np.full((96, 160, 3), 20, dtype=np.uint8)
    from feval_core.testing.facepack import draw_tiny_face

    upright = draw_tiny_face(upright, (90, 20, 150, 80), seed=4)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # what the camera wrote
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def _animated(fmt: str, frames: list[np.ndarray]) -> bytes:
    ims = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    ims[0].save(buf, fmt, save_all=True, append_images=ims[1:], duration=100, loop=0,
                **({"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


# -- the corpus ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[], Any]  # file cases: the file's bytes; memory cases: the object passed as an image
    expect: str  # "score" | "error" | "raises"
    match: str = ""  # error / exception message (regex)
    faces: int | None = None  # faces the tiny pack must find in a scored image (None: not checked)
    filename: str = ""  # file cases only
    cli: str = "same"  # file cases: "same" as the API, or "skipped" (a folder scan does not list it)


no_face = np.full((96, 96, 3), 20, dtype=np.uint8)

FILE_CASES = [
    Case("zero-byte", lambda: b"", "error", "empty file", filename="zero.png"),
    Case("truncated-jpeg", lambda: _encode(_face(), "JPEG")[:700], "error", "truncated", filename="cut.jpg"),
    Case("truncated-png", lambda: _encode(_face(), "PNG")[:-200], "error", "truncated", filename="cut.png"),
    Case("text-named-jpg", lambda: b"these are notes, not pixels\n" * 20, "error", "not an image file",
         filename="notes.jpg"),
    Case("postscript-named-png", lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "error",
         "not an image file", filename="eps.png"),  # Pillow would run Ghostscript on EPS: never opened as one
    Case("bomb-7000x7000-png", lambda: _encode(np.zeros((7000, 7000), np.uint8), "PNG"), "error", "too large",
         filename="bomb.png"),  # 49 Mpx in ~50 KB: refused before decoding (max_pixels 40 Mpx)
    Case("bomb-header-100000x100000", lambda: _png_header_only(100_000, 100_000), "error", "too large",
         filename="bomb_header.png"),
    Case("png-named-jpg", lambda: _encode(_face(), "PNG"), "score", faces=1, filename="really_png.jpg"),
    Case("16-bit-gray-png", lambda: _encode(Image.fromarray(
        np.asarray(Image.fromarray(_face()).convert("L")).astype(np.uint16) * 257), "PNG"), "score", faces=1,
        filename="gray16.png"),
    Case("cmyk-jpeg", lambda: _encode(Image.fromarray(_face()).convert("CMYK"), "JPEG", quality=95), "score",
         faces=1, filename="cmyk.jpg"),
    Case("palette-png", lambda: _encode(Image.fromarray(_face()).convert("P"), "PNG"), "score", faces=1,
         filename="palette.png"),
    Case("palette-transparency-png", lambda: _encode(Image.fromarray(_face()).convert("P"), "PNG", transparency=255),
         "score", faces=1, filename="palette_t.png"),
    Case("rgba-png", lambda: _encode(Image.fromarray(_face()).convert("RGBA"), "PNG"), "score", faces=1,
         filename="rgba.png"),
    Case("la-png", lambda: _encode(Image.fromarray(_face()).convert("LA"), "PNG"), "score", faces=1,
         filename="la.png"),
    Case("grayscale-png", lambda: _encode(Image.fromarray(_face()).convert("L"), "PNG"), "score", faces=1,
         filename="gray.png"),
    Case("bilevel-tiff", lambda: _encode(Image.fromarray(_face()).convert("L").point(lambda v: 255 * (v > 100))
                                         .convert("1"), "TIFF"), "score", faces=1, filename="bilevel.tif"),
    Case("animated-gif-face-first", lambda: _animated("GIF", [_face(), no_face]), "score", faces=1,
         filename="anim.gif"),  # first frame only: it has the face
    Case("animated-webp-face-second", lambda: _animated("WEBP", [no_face, _face()]), "score", faces=0,
         filename="anim.webp"),  # first frame only: the face in frame 2 is not seen
    Case("exif-rotated-jpeg", _exif_rotated, "score", faces=1, filename="exif6.jpg"),
    Case("1x1-png", lambda: _encode(np.full((1, 1, 3), 20, np.uint8), "PNG"), "score", faces=0,
         filename="px1.png"),
    Case("8x8-png", lambda: _encode(np.full((8, 8, 3), 20, np.uint8), "PNG"), "score", faces=0,
         filename="px8.png"),
    Case("4000x1-png", lambda: _encode(np.full((1, 4000, 3), 200, np.uint8), "PNG"), "score", faces=0,
         filename="strip_wide.png"),  # padded to 200:1 for the VLM (Qwen2-VL refuses more)
    Case("1x4000-png", lambda: _encode(np.full((4000, 1, 3), 200, np.uint8), "PNG"), "score", faces=0,
         filename="strip_tall.png"),
    Case("many-faces", lambda: _encode(_many_faces(), "PNG"), "score", faces=4, filename="crowd.png"),
    Case("non-latin-filename", lambda: _encode(_face(), "PNG"), "score", faces=1, filename="顔 写真 ✓.png"),
    Case("fifo-named-png", lambda: None, "error", "empty file", filename="pipe.png", cli="skipped"),
]
if sys.platform.startswith("linux"):  # names that are not valid UTF-8 exist on Linux file systems
    FILE_CASES.append(Case("undecodable-filename", lambda: _encode(_face(), "PNG"), "score", faces=1,
                           filename=os.fsdecode(b"bad\xff\xfename.png")))
if not hasattr(os, "mkfifo"):
    FILE_CASES = [c for c in FILE_CASES if c.id != "fifo-named-png"]


def _t(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float() / 255.0  # CHW in [0, 1]


def _nan_image() -> torch.Tensor:
    t = _t(_face())
    t[0, 5, 5] = float("nan")
    return t


def _inf_image() -> np.ndarray:
    a = _face().astype(np.float32) / 255
    a[3, 3, 1] = -np.inf
    return a


MEMORY_CASES = [
    # tensors and arrays with values that are not an image
    Case("tensor-nan", _nan_image, "error", "NaN or infinite"),
    Case("tensor-inf", lambda: _t(_face()).index_fill_(1, torch.tensor([0]), float("inf")), "error", "NaN or infinite"),
    Case("array-minus-inf", _inf_image, "error", "NaN or infinite"),
    Case("tensor-0..255-floats", lambda: _t(_face()) * 255, "error", "divide by 255"),
    Case("tensor-minus1..1", lambda: _t(_face()) * 2 - 1, "error", r"\(x \+ 1\) / 2"),
    Case("tensor-int64", lambda: torch.from_numpy(_face().astype(np.int64)), "error", "unsupported tensor dtype"),
    Case("array-int32", lambda: _face().astype(np.int32), "error", "unsupported array dtype"),
    Case("tensor-rounding-noise-1.0005", lambda: (_t(_face()) * 1.0005), "score", faces=1),
    # valid layouts, dtypes and modes
    Case("tensor-chw-float32", lambda: _t(_face()), "score", faces=1),
    Case("tensor-bchw-bf16-batch-of-1", lambda: _t(_face())[None].bfloat16(), "score", faces=1),
    Case("tensor-hwc-uint8", lambda: torch.from_numpy(_face()), "score", faces=1),
    Case("tensor-requires-grad", lambda: _t(_face()).requires_grad_(), "score", faces=1),
    Case("array-uint16", lambda: _face().astype(np.uint16) * 257, "score", faces=1),
    Case("array-float64", lambda: _face() / 255.0, "score", faces=1),
    Case("array-rgba-uint8", lambda: np.dstack([_face(), np.full((96, 96), 255, np.uint8)]), "score", faces=1),
    Case("array-gray-hw", lambda: np.asarray(Image.fromarray(_face()).convert("L")), "score", faces=1),
    Case("array-bool", lambda: np.asarray(Image.fromarray(_face()).convert("L")) > 100, "score", faces=1),
    Case("array-non-contiguous-view", lambda: _face()[:, ::-1], "score", faces=1),
    Case("array-1x1", lambda: np.zeros((1, 1, 3), np.uint8), "score", faces=0),
    Case("tensor-1x4000", lambda: torch.ones(3, 1, 4000) * 0.8, "score", faces=0),
    *[Case(f"pil-{mode.lower().replace(';', '')}", (lambda m=mode: Image.fromarray(_face()).convert(m)),
           "score", faces=1) for mode in ("1", "L", "LA", "P", "PA", "RGBA", "CMYK", "YCbCr", "HSV", "LAB")],
    Case("pil-i16", lambda: Image.fromarray(np.asarray(Image.fromarray(_face()).convert("L")).astype(np.uint16) * 257),
         "score", faces=1),
    Case("pil-8x8", lambda: Image.new("RGB", (8, 8), (20, 30, 40)), "score", faces=0),
]

RAISE_CASES = [
    Case("tensor-5d", lambda: torch.rand(1, 1, 3, 8, 8), "raises", "5-D"),
    Case("array-1d", lambda: np.zeros(12, np.uint8), "raises", "1-D"),
    Case("array-0d", lambda: np.array(0.5), "raises", "0-D"),
    Case("tensor-2-channels", lambda: torch.rand(2, 16, 16), "raises", "channel"),
    Case("array-5-channels", lambda: np.zeros((16, 16, 5), np.uint8), "raises", "5 channels"),
    Case("tensor-ambiguous-3x8x3", lambda: torch.rand(3, 8, 3), "raises", "ambiguous"),
    Case("tensor-zero-size", lambda: torch.rand(3, 0, 16), "raises", "zero-size"),
    Case("encoded-bytes", lambda: _encode(_face(), "PNG"), "raises", "encoded bytes"),
    Case("none", lambda: None, "raises", "unsupported input type"),
    Case("nested-list", lambda: [_face()], "raises", "nested lists"),
    Case("dict", lambda: {"image": _face()}, "raises", "unsupported input type"),
]
ALL_ROW_CASES = FILE_CASES + MEMORY_CASES


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The file cases written into one folder: (folder, case id -> path)."""
    folder = tmp_path_factory.mktemp("corpus")
    paths = {}
    for case in FILE_CASES:
        path = folder / case.filename
        if case.id == "fifo-named-png":
            os.mkfifo(path)
        else:
            path.write_bytes(case.make())
        paths[case.id] = str(path)
    return folder, paths


def _inputs(corpus: tuple[Path, dict[str, str]]) -> tuple[list[str], list[Any]]:
    _, paths = corpus
    ids = [c.id for c in FILE_CASES] + [c.id for c in MEMORY_CASES]
    return ids, [paths[c.id] for c in FILE_CASES] + [c.make() for c in MEMORY_CASES]


@pytest.fixture(scope="module")
def api_records(tiny_scorer, corpus) -> dict[str, dict]:
    """All row-level cases in ONE call: each must get its own outcome, whatever its neighbours are."""
    ids, inputs = _inputs(corpus)
    res = tiny_scorer.score(inputs, prompts=PROMPT)
    assert len(res) == len(ids)
    return dict(zip(ids, res.to_records()))


@pytest.fixture(scope="module")
def cli_run(tiny_ckpt, corpus, tmp_path_factory) -> tuple[int, dict[str, dict]]:
    folder, _ = corpus
    out = tmp_path_factory.mktemp("cli") / "results.jsonl"
    code = main(["score", str(folder), "--model", str(tiny_ckpt), "--out", str(out), "--dims", "quality",
                 "--device", "cpu", "--batch-size", "4"])
    data = out.read_bytes()
    assert data.endswith(b"\n")
    rows = [json.loads(line) for line in data.splitlines()]  # every line strict JSON, whatever the file names
    by_name = {r["image"]: r for r in rows}
    assert len(by_name) == len(rows), "one row per input"
    return code, by_name


@pytest.fixture(scope="module")
def reward_run(tiny_scorer, corpus) -> tuple[dict[str, float], dict[str, str | None]]:
    from reward import feval_reward

    ids, inputs = _inputs(corpus)
    out = feval_reward(inputs, PROMPT, scorer=tiny_scorer, weights={"quality": 1.0}, return_dict=True,
                       nan_reward=float("nan"))
    assert out["reward"].dtype == torch.float32 and out["reward"].shape == (len(ids),)
    return dict(zip(ids, out["reward"].tolist())), dict(zip(ids, out["result"].errors))


def _check_record(case: Case, rec: dict, scored: tuple[str, ...] = ("quality", "authenticity", "correspondence")
                  ) -> None:
    if case.expect == "error":
        assert rec["error"] and re.search(case.match, rec["error"]), rec["error"]
        assert all(rec[d] is None for d in DIMENSIONS) and rec["faces"] is None
        return
    assert rec["error"] is None, rec["error"]
    for d in DIMENSIONS:
        if d in scored:
            assert isinstance(rec[d], float) and 0.0 <= rec[d] <= 100.0, (d, rec[d])
        else:
            assert rec[d] is None, d
    if case.faces is not None:
        assert rec["faces"] == case.faces
    if case.faces == 0:
        assert any("no face" in w for w in rec["warnings"])


@pytest.mark.parametrize("case", ALL_ROW_CASES, ids=lambda c: c.id)
def test_corpus_through_the_python_api(case, api_records):
    _check_record(case, api_records[case.id])


@pytest.mark.parametrize("case", FILE_CASES, ids=lambda c: c.id)
def test_corpus_through_the_cli(case, corpus, cli_run):
    code, rows = cli_run
    assert code == 1, "inputs with errors make `feval score` exit with 1"
    path = corpus[1][case.id]
    if case.cli == "skipped":
        assert path not in rows, "a folder scan lists regular files only"
        return
    _check_record(case, rows[path], scored=("quality",))


@pytest.mark.parametrize("case", ALL_ROW_CASES, ids=lambda c: c.id)
def test_corpus_through_the_reward(case, reward_run):
    rewards, errors = reward_run
    if case.expect == "error":
        assert math.isnan(rewards[case.id]) and re.search(case.match, errors[case.id])
    else:
        assert 0.0 <= rewards[case.id] <= 100.0 and errors[case.id] is None


def test_reward_error_rows_get_nan_reward_and_a_warning_naming_the_reason(tiny_scorer, caplog):
    from reward import feval_reward

    with caplog.at_level(logging.WARNING, logger="reward"):
        r = feval_reward(torch.stack([_t(_face()), _nan_image()]), PROMPT, scorer=tiny_scorer)
    assert r[0] > 0 and r[1] == 0.0  # default nan_reward
    assert "NaN or infinite" in caplog.text


@pytest.mark.parametrize("case", RAISE_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("path", ["api", "reward"])
def test_inputs_that_cannot_be_images_fail_the_call_before_any_work(case, path, tiny_scorer, monkeypatch):
    work = _spy_on_work(tiny_scorer, monkeypatch)
    with pytest.raises(ImageInputError, match=case.match):
        _call(path, tiny_scorer, [_face(), case.make()], PROMPT)
    assert work == []


# -- one batch with a bad member ----------------------------------------------------------------------------
def test_a_bad_image_inside_a_batch_tensor_fails_alone(tiny_scorer):
    batch = torch.stack([_t(_face(0)), _nan_image(), _t(_face(1))])
    rec = tiny_scorer.score(batch, prompts=PROMPT).to_records()
    assert [r["error"] is None for r in rec] == [True, False, True]
    assert "<input 1>" in rec[1]["error"] and rec[0]["faces"] == rec[2]["faces"] == 1


def test_exif_orientation_is_applied_before_scoring(tiny_scorer, corpus):
    path = corpus[1]["exif-rotated-jpeg"]
    with Image.open(path) as stored:
        assert stored.size == (96, 160)  # stored sideways
        upright = ImageOps.exif_transpose(stored).convert("RGB")
    assert upright.size == (160, 96)
    by_path, by_pixels = tiny_scorer.score([path, upright], prompts=PROMPT).scores
    torch.testing.assert_close(by_path, by_pixels, rtol=0, atol=1e-4, equal_nan=True)


def test_empty_inputs_give_empty_results(tiny_scorer):
    from reward import feval_reward

    assert len(tiny_scorer.score([])) == 0 and tiny_scorer.score([]).scores.shape == (0, 4)
    assert len(tiny_scorer.score(torch.zeros(0, 3, 16, 16))) == 0
    assert feval_reward([], scorer=tiny_scorer).shape == (0,)


# -- lists that do not line up --------------------------------------------------------------------------------
def _spy_on_work(scorer: FEvalScorer, monkeypatch) -> list[str]:
    """Record image decoding and face detection: 'before any work' means neither happened."""
    import feval_core.scoring.scorer as scorer_mod

    work: list[str] = []
    real_load = scorer_mod.load_image

    def load(*a, **k):
        work.append("decode")
        return real_load(*a, **k)

    monkeypatch.setattr(scorer_mod, "load_image", load)
    real_analyze = scorer.face_encoder.analyze
    monkeypatch.setattr(scorer.face_encoder, "analyze", lambda *a, **k: (work.append("faces"), real_analyze(*a, **k))[1])
    return work


def _call(path: str, scorer: FEvalScorer, images: Any, prompts: Any = None, refs: Any = None) -> Any:
    if path == "api":
        return scorer.score(images, prompts=prompts, refs=refs)
    from reward import feval_reward

    return feval_reward(images, prompts, refs, scorer=scorer)


@pytest.mark.parametrize("path", ["api", "reward"])
@pytest.mark.parametrize("n_images, prompts, refs, message", [
    (3, ["a", "b"], None, "got 3 images but 2 prompts"),
    (2, ["a", "b", "c"], None, "got 2 images but 3 prompts"),
    (3, None, "two-refs", "got 3 images but 2 refs"),
    (3, None, "ref-batch-of-2", "got 3 images but 2 refs"),
    (3, [], None, "got 3 images but 0 prompts"),
])
def test_mismatched_lengths_fail_before_any_work(tiny_scorer, monkeypatch, path, n_images, prompts, refs, message):
    refs = {None: None, "two-refs": [_face(0), _face(1)],
            "ref-batch-of-2": torch.stack([_t(_face(0)), _t(_face(1))])}[refs]
    work = _spy_on_work(tiny_scorer, monkeypatch)
    with pytest.raises(InputMismatchError, match=message):
        _call(path, tiny_scorer, [_face(i) for i in range(n_images)], prompts, refs)
    assert work == [], "the mismatch must be found before any image is decoded"


# -- prompts ------------------------------------------------------------------------------------------------
LONG_MIXED = ("一位微笑的女士的肖像，柔和的光线 " + "صورة امرأة مبتسمة " + "👩‍🦰📸✨ ") * 160  # ~5000 chars

PROMPT_CASES = [
    # id, prompt, correspondence scored?, warning
    ("empty", "", False, None),
    ("whitespace-only", " \n\t  ", False, None),
    ("none", None, False, None),
    ("5000-latin", "a " * 2500, True, "prompt truncated to its first 256 tokens"),
    ("5000-mixed-scripts", LONG_MIXED[:5000], True, "prompt truncated to its first 256 tokens"),
    ("chinese", "一位微笑的女士的肖像", True, None),
    ("arabic", "صورة امرأة مبتسمة", True, None),
    ("emoji-zwj", "👩‍🦰 with 👓, 😀", True, None),
    ("right-to-left-override", "\u202eportrait\u202c of a man", True, None),
    ("control-characters", "a\x00 woman\x1b[31m in red", True, None),
    ("lone-surrogate", "a woman \udcff\udcfe", True, "not valid Unicode"),
]


def test_prompts_of_any_script_and_length(tiny_scorer):
    res = tiny_scorer.score([_face()] * len(PROMPT_CASES), prompts=[p for _, p, _, _ in PROMPT_CASES])
    for (cid, _, scored, warning), rec in zip(PROMPT_CASES, res.to_records()):
        assert rec["error"] is None, cid
        assert math.isfinite(rec["quality"]), cid
        if scored:
            assert isinstance(rec["correspondence"], float) and 0 <= rec["correspondence"] <= 100, cid
        else:
            assert rec["correspondence"] is None, cid
        if warning:
            assert any(warning in w for w in rec.get("warnings", [])), (cid, rec.get("warnings"))
        else:
            assert not rec.get("warnings"), (cid, rec.get("warnings"))
    # quality does not depend on the prompt
    assert len({round(r, 3) for r in res.scores[:, Q].tolist()}) == 1


def test_a_prompt_that_is_not_a_string_is_a_type_error(tiny_scorer):
    with pytest.raises(TypeError, match="prompts must be strings"):
        tiny_scorer.score([_face(), _face(1)], prompts=["a woman", 42])


# -- references and faces -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def zero_shot(tiny_ckpt) -> FEvalScorer:
    return FEvalScorer.zero_shot(str(tiny_ckpt / "backbone"), face_pack="tiny_face",
                                 face_root=tiny_ckpt / "face_pack", device="cpu")


def test_many_faces_are_counted_and_the_largest_is_the_main_face(zero_shot):
    crowd = _many_faces()
    res = zero_shot.score([crowd] * 4, refs=[face_image(s, size=96) for s in range(4)], dims=["identity"])
    assert res.faces == [4, 4, 4, 4]
    ident = res.scores[:, I].tolist()
    assert ident[0] > 95, "the reference of the largest face matches the main face"
    assert all(v < ident[0] - 20 for v in ident[1:]), ident


def test_reference_without_a_face_zero_shot_is_nan_with_a_reason(zero_shot):
    rec = zero_shot.score([_face()], refs=no_face, dims=["quality", "identity"]).to_records()[0]
    assert rec["identity"] is None and isinstance(rec["quality"], float)
    assert "no face detected in the reference image; identity not scored" in rec["warnings"]


def test_reference_without_a_face_trained_is_nan_with_a_reason(tiny_scorer):
    """One rule in every mode: identity compares two faces, so a faceless reference leaves it out."""
    rec = tiny_scorer.score([_face()], refs=no_face, dims=["quality", "identity"]).to_records()[0]
    assert rec["identity"] is None and isinstance(rec["quality"], float)
    assert "no face detected in the reference image; identity not scored" in rec["warnings"]


@pytest.mark.parametrize("scorer_kind", ["trained", "zero_shot"])
def test_image_without_a_face_has_no_identity(request, scorer_kind):
    scorer = request.getfixturevalue("tiny_scorer" if scorer_kind == "trained" else "zero_shot")
    rec = scorer.score([no_face], refs=_face(), dims=["quality", "identity"]).to_records()[0]
    assert rec["identity"] is None and isinstance(rec["quality"], float)
    assert rec["warnings"] == ["no face detected in the image; identity not scored"]  # said once, not twice
    alone = scorer.score([no_face], dims=["quality"]).to_records()[0]
    assert alone["warnings"] == ["no face detected in the image"]  # without identity, the bare note stays


def test_face_notes_say_each_thing_once():
    from feval_core.faces.identity import face_notes

    bare = "no face detected in the image"
    both = "no face detected in the image and the reference image; identity not scored"
    assert face_notes([bare, "prompt truncated", both, "prompt truncated"]) == ["prompt truncated", both]
    ref_only = "no face detected in the reference image; identity not scored"
    assert face_notes([bare, ref_only]) == [bare, ref_only]  # different facts: both stay
    assert face_notes([bare]) == [bare]


@pytest.mark.parametrize("scorer_kind", ["trained", "zero_shot"])
def test_unusable_reference_leaves_identity_out_with_a_reason(request, scorer_kind, tmp_path):
    scorer = request.getfixturevalue("tiny_scorer" if scorer_kind == "trained" else "zero_shot")
    broken = tmp_path / "ref.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 broken")
    rec = scorer.score([_face()], refs=str(broken)).to_records()[0]
    assert rec["identity"] is None and rec["error"] is None and isinstance(rec["quality"], float)
    assert any(w.startswith("reference unusable") and "ref.jpg" in w for w in rec["warnings"])


def test_cli_long_mixed_prompt_and_a_reference_without_a_face(tiny_ckpt, tmp_path):
    img, ref = tmp_path / "a.png", tmp_path / "ref.png"
    Image.fromarray(_face()).save(img)
    Image.fromarray(no_face).save(ref)
    out = tmp_path / "r.jsonl"
    assert main(["score", str(img), "--model", str(tiny_ckpt), "--prompt", LONG_MIXED[:5000], "--ref", str(ref),
                 "--out", str(out), "--device", "cpu"]) == 0
    (row,) = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert all(isinstance(row[d], float) for d in DIMENSIONS if d != "identity")
    assert row["identity"] is None, "a reference without a face leaves identity out"
    assert any("truncated" in w for w in row["warnings"])
    assert any("reference" in w for w in row["warnings"])


# -- one scorer, many threads ---------------------------------------------------------------------------------
def _requests() -> list[dict]:
    f = [_face(s) for s in range(4)]
    return [
        {"images": [f[0], f[1]], "prompts": "a woman", "refs": f[2]},
        {"images": torch.stack([_t(f[1]), _t(f[2]), _nan_image()]), "prompts": ["x", "一位女士", "👩"],
         "dims": ["quality", "correspondence"]},
        {"images": [f[2], no_face, f[0]], "prompts": None, "refs": [f[0], no_face, f[1]], "batch_size": 2,
         "dims": ["identity"]},
        {"images": [np.zeros((1, 4000, 3), np.uint8), f[3]], "refs": f[1], "dims": ["identity", "quality"]},
        {"images": [f[0]] * 3, "prompts": [f"p{i}" for i in range(3)], "batch_size": 1, "dims": ["correspondence"]},
    ]


@pytest.mark.parametrize("scorer_kind", ["trained", "zero_shot"])
def test_one_scorer_used_from_many_threads_gives_the_sequential_scores(request, scorer_kind):
    from concurrent.futures import ThreadPoolExecutor

    scorer = request.getfixturevalue("tiny_scorer" if scorer_kind == "trained" else "zero_shot")
    reqs = _requests()

    def run(r: dict) -> tuple:
        res = scorer.score(**r)
        return res.scores, res.errors, res.faces

    sequential = [run(r) for r in reqs]
    repeat = 2 if scorer_kind == "trained" else 1
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(run, reqs * repeat))  # all requests at once (each twice for the trained one)
    for k, got in enumerate(concurrent):
        want = sequential[k % len(reqs)]
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=0, equal_nan=True)
        assert got[1:] == want[1:]


def test_interleaved_streams_on_one_scorer(tiny_scorer):
    """Two ``iter_scores`` generators advanced in turn (as a streaming server would) do not mix up rows."""
    a_imgs, b_imgs = [_face(s) for s in range(2)], [_face(s) for s in range(2, 4)]
    a = tiny_scorer.iter_scores(a_imgs, "a woman", dims=["quality", "correspondence"], batch_size=1)
    b = tiny_scorer.iter_scores(b_imgs, "a man", dims=["quality", "correspondence"], batch_size=1)
    parts_a, parts_b = [], []
    for pa, pb in zip(a, b):
        parts_a.append(pa.scores)
        parts_b.append(pb.scores)
    for parts, imgs, prompt in ((parts_a, a_imgs, "a woman"), (parts_b, b_imgs, "a man")):
        alone = tiny_scorer.score(imgs, prompt, dims=["quality", "correspondence"], batch_size=1).scores
        torch.testing.assert_close(torch.cat(parts), alone, rtol=0, atol=0, equal_nan=True)



# -- fuzzing what the image conversion tests cannot see: sizes through the whole pipeline -----------------------
SIDES = st.one_of(st.sampled_from([1, 2, 3, 27, 28, 29, 127, 128, 129, 4000, 6000]), st.integers(1, 6000))


@settings(max_examples=12, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(w=SIDES, h=SIDES, level=st.sampled_from([0, 20, 128, 255]))
def test_any_image_size_scores_through_detector_and_vlm(tiny_scorer, w, h, level):
    """Face detection and the VLM processor have their own size limits (OpenCV's resize, Qwen2-VL's 200:1)."""
    assume(w * h <= 250_000)
    rec = tiny_scorer.score([np.full((h, w, 3), level, np.uint8)], dims=["quality"]).to_records()[0]
    assert rec["error"] is None and isinstance(rec["quality"], float) and isinstance(rec["faces"], int)


@settings(max_examples=200, deadline=None, database=None)
@given(w=st.integers(1, 5000), h=st.integers(1, 5000), max_aspect=st.sampled_from([1, 2, 50, 200]))
def test_pad_to_aspect_keeps_every_pixel_and_bounds_the_ratio(w, h, max_aspect):
    from feval_core.inputs.images import pad_to_aspect

    im = Image.new("RGB", (w, h), (200, 100, 50))
    out = pad_to_aspect(im, max_aspect)
    W, H = out.size
    assert max(W, H) <= max_aspect * min(W, H) or (W, H) == (w, h)
    assert W >= w and H >= h and (W == w or H == h), "pads one axis only"
    if (W, H) == (w, h):
        assert out is im
    else:
        x0, y0 = (W - w) // 2, (H - h) // 2
        assert out.crop((x0, y0, x0 + w, y0 + h)).tobytes() == im.tobytes()
        assert out.getpixel((0, 0)) == (0, 0, 0) or out.getpixel((W - 1, H - 1)) == (0, 0, 0)
