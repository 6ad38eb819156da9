"""The preview of 'Score faces': every label fits the image, from 64 to 2048 px, with the longest labels."""

from __future__ import annotations

import importlib
import math
from types import ModuleType

import pytest
import torch
from PIL import ImageFont

from feval_core import DIMENSIONS
from tests.comfy_stub import install, load_pack

SIZES = [(64, 64), (96, 96), (128, 128), (200, 150), (256, 256), (512, 512), (768, 1344), (1024, 1024),
         (2048, 2048), (2048, 64), (64, 2048)]


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    install(tmp_path_factory.mktemp("ComfyUI"))
    load_pack()
    return importlib.import_module("feval_pack.nodes")


def longest_scores(pack: ModuleType, n: int, value: float, faces: int | None) -> object:
    """Scores whose labels are as long as they get: every dimension asked, 100.0 (or n/a), and 'no face'."""
    values = torch.full((n, len(DIMENSIONS)), value)
    return pack.scores.FEvalScores(values, DIMENSIONS, [faces] * n, [[] for _ in range(n)])


def labels_of(lines: list[str]) -> list[str]:
    return [p for line in lines for p in line.split("  ")]


def measured_width(text: str, size: int) -> float:
    """The test's own ruler: Pillow's default font at ``size``, ink right edge when drawn at x = 0."""
    return ImageFont.load_default(size=size).getbbox(text)[2]


@pytest.mark.parametrize(("width", "height"), SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize(("value", "faces"), [(100.0, 0), (math.nan, 1), (55.8, None)],
                         ids=["100-no-face", "na", "plain"])
def test_every_label_fits_the_image(pack: ModuleType, width: int, height: int, value: float, faces) -> None:
    preview = pack.preview
    scores = longest_scores(pack, 1, value, faces)
    parts = preview.caption_parts(scores, 0)
    assert parts[-1] == "(0-100)" and (("no face" in parts) == (faces == 0))
    cap = preview.layout(parts, width, height)
    assert labels_of(cap.lines) == parts  # every label drawn, once, in order, none split
    for k, line in enumerate(cap.lines):
        assert cap.x >= 1 and cap.x + measured_width(line, cap.size) <= width - 1, (line, cap.size)
        bottom = cap.y + k * cap.step + ImageFont.load_default(size=cap.size).getbbox(line)[3]
        assert cap.band_top <= cap.y and bottom <= height - 1
    assert height - cap.band_top <= max(0.5 * height, cap.step + 2 * cap.x)  # the face stays visible
    if min(width, height) >= 256:
        assert cap.size >= min(width, height) // 40  # still readable on large images
    # what is drawn: white text on a dark band at the bottom, nothing in the outer columns or above the band
    out = preview.annotate(torch.zeros(1, height, width, 3), scores)[0]
    bright = (out > 0.5).all(-1)
    assert bright.any() and not bright[: cap.band_top].any()
    assert not bright[:, 0].any() and not bright[:, -1].any()


def test_the_old_one_line_caption_did_not_fit(pack: ModuleType) -> None:
    """Issue 17's measurement, kept as the reason for the layout: one line at a sixteenth of the side is wider than
    the image for four dimensions, while the layout's lines fit."""
    parts = pack.preview.caption_parts(longest_scores(pack, 1, 55.8, 1), 0)
    for side in (128, 512, 2048):
        size = side // 16
        assert measured_width("  ".join(parts), size) > side
        cap = pack.preview.layout(parts, side, side)
        assert max(measured_width(line, cap.size) for line in cap.lines) <= side - 2 * cap.x


def test_preview_of_a_batch_keeps_shape_and_images(pack: ModuleType) -> None:
    images = torch.rand(3, 300, 200, 3)
    out = pack.preview.annotate(images, longest_scores(pack, 3, 70.0, 1))
    assert out.shape == images.shape and out.dtype == torch.float32
    cap = pack.preview.layout(pack.preview.caption_parts(longest_scores(pack, 1, 70.0, 1), 0), 200, 300)
    torch.testing.assert_close(out[:, : cap.band_top], images[:, : cap.band_top], atol=1 / 255, rtol=0)
