"""Tests for feval_core.inputs.images: every input kind users pass, and every way it can be wrong.

All images are generated inside the tests; no binary files are committed.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from feval_core.errors import ImageInputError, InputMismatchError
from feval_core.inputs.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    MAX_SIDE,
    ImageItem,
    broadcast,
    check_same_length,
    expand_inputs,
    load_image,
    to_rgb_array,
)

WHITE = (255, 255, 255)
RED, BLUE = (200, 30, 30), (30, 30, 200)


def assert_rgb(im: Image.Image, size: tuple[int, int]) -> None:
    assert isinstance(im, Image.Image)
    assert im.mode == "RGB"
    assert im.size == size


def assert_close(got, want, tol: int = 1) -> None:
    assert all(abs(int(g) - int(w)) <= tol for g, w in zip(got, want, strict=True)), (
        got,
        want,
    )


def two_colour(size: tuple[int, int] = (16, 8)) -> Image.Image:
    """Left half RED, right half BLUE."""
    w, h = size
    arr = np.empty((h, w, 3), np.uint8)
    arr[:, : w // 2] = RED
    arr[:, w // 2 :] = BLUE
    return Image.fromarray(arr)


def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but whose data is a single pixel."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    data[16:20] = width.to_bytes(4, "big")
    data[20:24] = height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def palette_image(transparent: bool, mode: str = "P") -> Image.Image:
    im = Image.new("P", (3, 2), 0)
    im.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    im.putpixel((1, 0), 1)
    if transparent:
        im.info["transparency"] = 0
    return im


def filled(mode: str, value, size: tuple[int, int] = (3, 2)) -> Image.Image:
    return Image.new(mode, size, value)


def u16_image(mode: str, value: int) -> Image.Image:
    im = Image.fromarray(np.full((2, 3), value, np.uint16))
    return im if mode == "I;16" else im.convert(mode) if mode == "I" else Image.new(mode, (3, 2), value)


def transparent_key(mode: str) -> Image.Image:
    im = Image.new(mode, (3, 2), 0 if mode == "L" else (0, 0, 0))
    im.putpixel((1, 0), 7 if mode == "L" else (7, 7, 7))
    im.info["transparency"] = 0 if mode == "L" else (0, 0, 0)
    return im


# ---------------------------------------------------------------------------------------------------
# PIL modes

PIL_MODE_CASES = [
    # id, image factory (3x2), {(x, y): expected RGB}
    ("RGB", lambda: filled("RGB", (10, 20, 30)), {(0, 0): (10, 20, 30)}),
    ("L", lambda: filled("L", 100), {(0, 0): (100, 100, 100)}),
    ("LA-opaque", lambda: filled("LA", (100, 255)), {(0, 0): (100, 100, 100)}),
    ("LA-transparent", lambda: filled("LA", (100, 0)), {(0, 0): WHITE}),
    ("LA-half", lambda: filled("LA", (0, 128)), {(0, 0): (127, 127, 127)}),
    ("P", lambda: palette_image(False), {(0, 0): (10, 20, 30), (1, 0): (200, 100, 50)}),
    (
        "P-transparency",
        lambda: palette_image(True),
        {(0, 0): WHITE, (1, 0): (200, 100, 50)},
    ),
    (
        "PA-transparent",
        lambda: palette_image(False).convert("PA"),
        {(1, 0): (200, 100, 50)},
    ),
    (
        "RGBA-opaque",
        lambda: filled("RGBA", (200, 10, 20, 255)),
        {(0, 0): (200, 10, 20)},
    ),
    ("RGBA-transparent", lambda: filled("RGBA", (0, 0, 0, 0)), {(0, 0): WHITE}),
    ("RGBA-half", lambda: filled("RGBA", (0, 0, 0, 128)), {(0, 0): (127, 127, 127)}),
    ("RGBa-transparent", lambda: filled("RGBa", (0, 0, 0, 0)), {(0, 0): WHITE}),
    (
        "RGB-transparency-key",
        lambda: transparent_key("RGB"),
        {(0, 0): WHITE, (1, 0): (7, 7, 7)},
    ),
    (
        "L-transparency-key",
        lambda: transparent_key("L"),
        {(0, 0): WHITE, (1, 0): (7, 7, 7)},
    ),
    ("CMYK-white", lambda: filled("CMYK", (0, 0, 0, 0)), {(0, 0): WHITE}),
    ("CMYK-black", lambda: filled("CMYK", (0, 0, 0, 255)), {(0, 0): (0, 0, 0)}),
    ("CMYK-cyan", lambda: filled("CMYK", (255, 0, 0, 0)), {(0, 0): (0, 255, 255)}),
    # 16-bit is scaled: clipping would turn 25700 into 255
    ("I;16-scaled", lambda: u16_image("I;16", 25700), {(0, 0): (100, 100, 100)}),
    ("I;16-max", lambda: u16_image("I;16", 65535), {(0, 0): WHITE}),
    ("I;16-one", lambda: u16_image("I;16", 257), {(0, 0): (1, 1, 1)}),
    ("I;16B", lambda: u16_image("I;16B", 25700), {(0, 0): (100, 100, 100)}),
    ("I", lambda: u16_image("I", 25700), {(0, 0): (100, 100, 100)}),
    ("F", lambda: filled("F", 0.5), {(0, 0): (128, 128, 128)}),
    ("1-on", lambda: filled("1", 1), {(0, 0): WHITE}),
    ("1-off", lambda: filled("1", 0), {(0, 0): (0, 0, 0)}),
    ("RGBX", lambda: filled("RGBX", (1, 2, 3, 0)), {(0, 0): (1, 2, 3)}),
    ("YCbCr-grey", lambda: filled("YCbCr", (128, 128, 128)), {(0, 0): (128, 128, 128)}),
]


@pytest.mark.parametrize(
    ("factory", "expected"),
    [c[1:] for c in PIL_MODE_CASES],
    ids=[c[0] for c in PIL_MODE_CASES],
)
def test_pil_modes(factory, expected):
    src = factory()
    im = load_image(src)
    assert_rgb(im, (3, 2))
    for xy, rgb in expected.items():
        assert_close(im.getpixel(xy), rgb)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (filled("F", 200.0), "divide by 255"),
        (filled("F", -0.5), r"\(x \+ 1\) / 2"),
        (filled("F", float("nan")), "NaN"),
        (filled("I", 70000), "16-bit"),
        (filled("I", -5), "16-bit"),
        (filled("La", (1, 2)), "unsupported PIL mode 'La'"),
    ],
    ids=["F-0..255", "F-[-1,1]", "F-nan", "I-too-big", "I-negative", "La"],
)
def test_pil_mode_value_errors(image, match):
    with pytest.raises(ImageInputError, match=match):
        load_image(image)


def test_pil_rgb_input_is_not_aliased():
    src = filled("RGB", (10, 20, 30))
    out = load_image(src)
    src.putpixel((0, 0), (0, 0, 0))
    assert out.getpixel((0, 0)) == (10, 20, 30)


# ---------------------------------------------------------------------------------------------------
# files

FILE_CASES = [
    # id, format, extension, save kwargs, tolerance
    ("png", "PNG", ".png", {}, 0),
    ("jpeg", "JPEG", ".jpg", {"quality": 95}, 12),
    ("jpeg-upper-ext", "JPEG", ".JPEG", {"quality": 95}, 12),
    ("webp-lossless", "WEBP", ".webp", {"lossless": True}, 0),
    ("webp-lossy", "WEBP", ".webp", {"quality": 90}, 16),
    ("bmp", "BMP", ".bmp", {}, 0),
    ("tif", "TIFF", ".tif", {}, 0),
    ("tiff-lzw", "TIFF", ".tiff", {"compression": "tiff_lzw"}, 0),
    ("gif", "GIF", ".gif", {}, 2),
]


@pytest.mark.parametrize(
    ("fmt", "ext", "kwargs", "tol"),
    [c[1:] for c in FILE_CASES],
    ids=[c[0] for c in FILE_CASES],
)
def test_file_formats(tmp_path, fmt, ext, kwargs, tol):
    path = tmp_path / f"img{ext}"
    two_colour().save(path, fmt, **kwargs)
    im = load_image(path)
    assert_rgb(im, (16, 8))
    assert_close(im.getpixel((2, 4)), RED, tol)
    assert_close(im.getpixel((13, 4)), BLUE, tol)


FILE_MODE_CASES = [
    # id, image, format, extension, {(x, y): expected}
    ("png-16bit", u16_image("I;16", 25700), "PNG", ".png", {(0, 0): (100, 100, 100)}),
    ("tiff-16bit", u16_image("I;16", 25700), "TIFF", ".tif", {(0, 0): (100, 100, 100)}),
    (
        "png-rgba-transparent",
        filled("RGBA", (0, 0, 0, 0)),
        "PNG",
        ".png",
        {(0, 0): WHITE},
    ),
    ("png-la", filled("LA", (50, 255)), "PNG", ".png", {(0, 0): (50, 50, 50)}),
    (
        "png-palette-transparency",
        palette_image(True),
        "PNG",
        ".png",
        {(0, 0): WHITE, (1, 0): (200, 100, 50)},
    ),
    (
        "gif-transparency",
        palette_image(True),
        "GIF",
        ".gif",
        {(0, 0): WHITE, (1, 0): (200, 100, 50)},
    ),
    ("webp-rgba", filled("RGBA", (0, 0, 0, 0)), "WEBP", ".webp", {(0, 0): WHITE}),
    ("jpeg-grey", filled("L", 90), "JPEG", ".jpg", {(0, 0): (90, 90, 90)}),
    ("jpeg-cmyk", filled("CMYK", (0, 0, 0, 0)), "JPEG", ".jpg", {(0, 0): WHITE}),
    ("tiff-float", filled("F", 0.25), "TIFF", ".tif", {(0, 0): (64, 64, 64)}),
]


@pytest.mark.parametrize(
    ("image", "fmt", "ext", "expected"),
    [c[1:] for c in FILE_MODE_CASES],
    ids=[c[0] for c in FILE_MODE_CASES],
)
def test_file_modes(tmp_path, image, fmt, ext, expected):
    path = tmp_path / f"img{ext}"
    image.save(path, fmt)
    im = load_image(path)
    assert_rgb(im, image.size)
    for xy, rgb in expected.items():
        assert_close(im.getpixel(xy), rgb, tol=2)


@pytest.mark.parametrize(
    ("fmt", "ext"),
    [("GIF", ".gif"), ("WEBP", ".webp"), ("PNG", ".png"), ("TIFF", ".tif")],
)
def test_animated_file_gives_first_frame(tmp_path, caplog, fmt, ext):
    frames = [filled("RGB", c, (8, 8)) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    path = tmp_path / f"anim{ext}"
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=100, **kwargs)
    with caplog.at_level(logging.DEBUG, logger="feval_core.inputs.decode"):
        im = load_image(path)
    assert_rgb(im, (8, 8))
    assert_close(im.getpixel((4, 4)), (255, 0, 0), tol=2)
    assert "3 frames; using the first frame" in caplog.text


EXIF_CASES = [
    # orientation, output size, where the stored top-left red block ends up, a point that is not red
    (1, (20, 10), (1, 1), (18, 8)),
    (3, (20, 10), (18, 8), (1, 1)),
    (6, (10, 20), (8, 1), (1, 1)),
    (8, (10, 20), (1, 18), (1, 1)),
]


@pytest.mark.parametrize("as_pil", [False, True], ids=["path", "opened-pil"])
@pytest.mark.parametrize(
    ("orientation", "size", "red_at", "dark_at"),
    EXIF_CASES,
    ids=[f"exif-{c[0]}" for c in EXIF_CASES],
)
def test_exif_orientation(tmp_path, orientation, size, red_at, dark_at, as_pil):
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:4, :4] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.jpg"
    Image.fromarray(arr).save(path, "JPEG", quality=95, exif=exif)
    if as_pil:
        with Image.open(path) as opened:
            im = load_image(opened)
    else:
        im = load_image(str(path))
    assert_rgb(im, size)
    assert_close(im.getpixel(red_at), (255, 0, 0), tol=40)
    assert_close(im.getpixel(dark_at), (0, 0, 0), tol=40)


# ---------------------------------------------------------------------------------------------------
# bad files


def cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


def noisy(size: tuple[int, int] = (64, 64)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


BAD_FILE_CASES = [
    # id, file name, bytes, match, load_image kwargs
    ("empty-file", "a.png", b"", "empty file", {}),
    (
        "text-as-jpeg",
        "a.jpg",
        b"hello, this is not an image\n" * 8,
        "not an image file",
        {},
    ),
    ("random-as-png", "a.png", bytes(range(256)) * 4, "not an image file", {}),
    ("truncated-jpeg", "a.jpg", cut(encode(noisy(), "JPEG")), "truncated", {}),
    ("truncated-png", "a.png", cut(encode(noisy(), "PNG")), "truncated", {}),
    ("truncated-gif", "a.gif", cut(encode(noisy(), "GIF")), "truncated", {}),
    ("truncated-tiff", "a.tif", cut(encode(noisy(), "TIFF")), "truncated", {}),
    (
        "eps-not-decoded",
        "a.png",
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n",
        "not an image file",
        {},
    ),
    ("truncated-webp", "a.webp", cut(encode(noisy(), "WEBP")), "re-download", {}),
    (
        "over-max-pixels",
        "a.png",
        png_declaring(7000, 7000),
        r"too large: 7000x7000 = 49000000 pixels > max_pixels",
        {},
    ),
    (
        "over-custom-max",
        "a.png",
        encode(noisy((10, 10)), "PNG"),
        r"too large: 10x10 = 100 pixels > max_pixels \(99\); downscale it or raise max_pixels",
        {"max_pixels": 99},
    ),
    ("side-too-long", "a.png", png_declaring(MAX_SIDE + 1, 1), "exceeds 32768", {}),
    (
        "pil-bomb-error",
        "a.png",
        png_declaring(20000, 20000),
        "decompression bomb",
        {"max_pixels": 10**12},
    ),
    (
        "pil-bomb-warning",
        "a.png",
        png_declaring(10000, 9000),
        "decompression bomb",
        {"max_pixels": 10**12},
    ),
]


@pytest.mark.parametrize(
    ("filename", "data", "match", "kwargs"),
    [c[1:] for c in BAD_FILE_CASES],
    ids=[c[0] for c in BAD_FILE_CASES],
)
def test_bad_files(tmp_path, filename, data, match, kwargs):
    path = tmp_path / filename
    path.write_bytes(data)
    with pytest.raises(ImageInputError, match=match) as info:
        load_image(path, **kwargs)
    assert str(path) in str(info.value)  # the message names the input


def test_bomb_check_leaves_warning_filters_alone(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(10000, 9000))
    before = list(warnings.filters)
    with pytest.raises(ImageInputError, match="decompression bomb"):
        load_image(path, max_pixels=10**12)
    assert warnings.filters == before


def test_concurrent_loads(tmp_path):
    paths = []
    for k in range(24):
        path = tmp_path / f"{k}.png"
        if k % 3 == 0:
            path.write_bytes(png_declaring(10000, 9000))  # bomb warning path, under the lock
        else:
            Image.new("RGB", (5, 4), (k, k, k)).save(path)
        paths.append(path)

    def outcome(path):
        try:
            return load_image(path, max_pixels=10**12).getpixel((0, 0))
        except ImageInputError as err:
            return "bomb" if "decompression bomb" in str(err) else str(err)

    before = list(warnings.filters)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(outcome, paths))
    assert results == ["bomb" if k % 3 == 0 else (k, k, k) for k in range(24)]
    assert warnings.filters == before


def test_truncated_refused_even_if_pillow_told_to_allow(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    path = tmp_path / "a.jpg"
    path.write_bytes(cut(encode(noisy(), "JPEG")))
    with pytest.raises(ImageInputError, match="truncated"):
        load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_truncated_lazily_opened_pil_image(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(cut(encode(noisy(), "PNG")))
    with Image.open(path) as lazy, pytest.raises(ImageInputError, match="truncated"):
        load_image(lazy)


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("does/not/exist.png", "file not found; check the path"),
        ("https://example.com/face.png", "does not download URLs"),
    ],
)
def test_missing_paths(source, match):
    with pytest.raises(ImageInputError, match=match) as info:
        load_image(source)
    assert source in str(info.value)


def test_folder_to_load_image(tmp_path):
    with pytest.raises(ImageInputError, match="is a folder"):
        load_image(tmp_path)


@pytest.mark.parametrize("size", [(1, 1), (8, 8), (1, 4000), (4000, 1), (MAX_SIDE, 1)])
@pytest.mark.parametrize("kind", ["png", "pil", "numpy"])
def test_small_and_extreme_aspect_sizes_are_fine(tmp_path, size, kind):
    pil = Image.new("RGB", size, (9, 8, 7))
    if kind == "png":
        source = tmp_path / "a.png"
        pil.save(source)
    else:
        source = pil if kind == "pil" else np.asarray(pil)
    im = load_image(source)
    assert_rgb(im, size)
    assert im.getpixel((size[0] - 1, size[1] - 1)) == (9, 8, 7)


@pytest.mark.parametrize("kind", ["pil", "numpy", "torch"])
def test_side_over_limit_refused_for_memory_inputs(kind):
    w = MAX_SIDE + 1
    source = {
        "pil": lambda: Image.new("L", (w, 1)),
        "numpy": lambda: np.zeros((1, w), np.uint8),
        "torch": lambda: torch.zeros(2, w, 3),
    }[kind]()
    with pytest.raises(ImageInputError, match="exceeds 32768"):
        load_image(source)


def test_max_pixels_applies_to_arrays():
    with pytest.raises(ImageInputError, match="too large: 10x10 = 100 pixels"):
        load_image(np.zeros((10, 10, 3), np.uint8), max_pixels=50)
    assert DEFAULT_MAX_PIXELS == 40_000_000


# ---------------------------------------------------------------------------------------------------
# numpy


def np_full(shape, value, dtype):
    return np.full(shape, value, dtype=dtype)


NUMPY_CASES = [
    # id, array factory, expected size (w, h), expected pixel at (0, 0)
    (
        "hwc-uint8",
        lambda: np_full((4, 6, 3), (10, 20, 30), np.uint8),
        (6, 4),
        (10, 20, 30),
    ),
    ("hw-uint8", lambda: np_full((4, 6), 100, np.uint8), (6, 4), (100, 100, 100)),
    ("hwc1-uint8", lambda: np_full((4, 6, 1), 100, np.uint8), (6, 4), (100, 100, 100)),
    (
        "hwc4-opaque",
        lambda: np_full((4, 6, 4), (10, 20, 30, 255), np.uint8),
        (6, 4),
        (10, 20, 30),
    ),
    (
        "hwc4-transparent",
        lambda: np_full((4, 6, 4), (10, 20, 30, 0), np.uint8),
        (6, 4),
        WHITE,
    ),
    (
        "float32-half",
        lambda: np_full((4, 6, 3), 0.5, np.float32),
        (6, 4),
        (128, 128, 128),
    ),
    ("float64-one", lambda: np_full((4, 6, 3), 1.0, np.float64), (6, 4), WHITE),
    ("float16-zero", lambda: np_full((4, 6, 3), 0.0, np.float16), (6, 4), (0, 0, 0)),
    (
        "float-within-tolerance-high",
        lambda: np_full((4, 6), 1.0005, np.float32),
        (6, 4),
        WHITE,
    ),
    (
        "float-within-tolerance-low",
        lambda: np_full((4, 6), -0.0005, np.float32),
        (6, 4),
        (0, 0, 0),
    ),
    ("float-rgba", lambda: np_full((4, 6, 4), (0, 0, 0, 0), np.float32), (6, 4), WHITE),
    (
        "uint16-scaled",
        lambda: np_full((4, 6, 3), 25700, np.uint16),
        (6, 4),
        (100, 100, 100),
    ),
    ("uint16-max", lambda: np_full((4, 6), 65535, np.uint16), (6, 4), WHITE),
    ("bool", lambda: np_full((4, 6), True, np.bool_), (6, 4), WHITE),
    (
        "strided-view",
        lambda: np_full((4, 12, 3), 7, np.uint8)[:, ::2],
        (6, 4),
        (7, 7, 7),
    ),
    ("batch-of-one", lambda: np_full((1, 4, 6, 3), 9, np.uint8), (6, 4), (9, 9, 9)),
]


@pytest.mark.parametrize(
    ("factory", "size", "pixel"),
    [c[1:] for c in NUMPY_CASES],
    ids=[c[0] for c in NUMPY_CASES],
)
def test_numpy_inputs(factory, size, pixel):
    arr = factory()
    im = load_image(arr)
    assert_rgb(im, size)
    assert_close(im.getpixel((0, 0)), pixel)
    assert to_rgb_array(arr).shape == (size[1], size[0], 3)


def test_numpy_pixel_positions_follow_hwc():
    arr = np.zeros((5, 7, 3), np.uint8)
    arr[1, 2] = (1, 2, 3)  # row 1, column 2
    im = load_image(arr)
    assert im.getpixel((2, 1)) == (1, 2, 3)
    assert to_rgb_array(arr)[1, 2].tolist() == [1, 2, 3]


def test_numpy_output_is_not_aliased():
    arr = np_full((4, 6, 3), 10, np.uint8)
    im = load_image(arr)
    arr[:] = 0
    assert im.getpixel((0, 0)) == (10, 10, 10)


NUMPY_ERROR_CASES = [
    # id, array, match
    (
        "float-0..255",
        np_full((4, 6, 3), 200.0, np.float32),
        "looks like 0..255: divide by 255",
    ),
    (
        "float-[-1,1]",
        np.linspace(-1, 1, 72, dtype=np.float32).reshape(4, 6, 3),
        r"looks like \[-1, 1\]: map with \(x \+ 1\) / 2",
    ),
    (
        "float-wild",
        np.array([[-5.0, 300.0]], np.float32),
        r"expected \[0, 1\]; rescale it",
    ),
    ("float-nan", np_full((4, 6), np.nan, np.float32), "NaN or infinite"),
    ("float-inf", np_full((4, 6), np.inf, np.float64), "NaN or infinite"),
    ("int32", np_full((4, 6, 3), 5, np.int32), "unsupported array dtype int32"),
    ("int64", np_full((4, 6), 5, np.int64), "unsupported array dtype int64"),
    ("complex", np_full((4, 6), 0, np.complex64), "unsupported array dtype complex64"),
    (
        "chw",
        np_full((3, 8, 8), 0, np.uint8),
        r"channels-last, use a.transpose\(1, 2, 0\)",
    ),
    (
        "two-channels",
        np_full((8, 8, 2), 0, np.uint8),
        "has 2 channels, expected 1, 3 or 4",
    ),
    ("five-channels", np_full((8, 8, 5), 0, np.uint8), "has 5 channels"),
    ("rank-1", np_full((8,), 0, np.uint8), r"shape \[8\] is 1-D"),
    (
        "rank-5",
        np_full((1, 1, 8, 8, 3), 0, np.uint8),
        r"shape \[1, 1, 8, 8, 3\] is 5-D",
    ),
    ("rank-0", np.array(3, np.uint8), "is 0-D"),
    (
        "zero-height",
        np_full((0, 8, 3), 0, np.uint8),
        r"shape \[0, 8, 3\] has a zero-size dimension",
    ),
    ("zero-channels", np_full((8, 8, 0), 0, np.uint8), "zero-size dimension"),
    (
        "batch-to-load-image",
        np_full((2, 8, 8, 3), 0, np.uint8),
        "is a batch of 2 images; split it with expand_inputs",
    ),
]


@pytest.mark.parametrize(
    ("arr", "match"),
    [c[1:] for c in NUMPY_ERROR_CASES],
    ids=[c[0] for c in NUMPY_ERROR_CASES],
)
def test_numpy_errors(arr, match):
    with pytest.raises(ImageInputError, match=match):
        load_image(ImageItem(arr, "<input 4>"))
    with pytest.raises(ImageInputError, match=r"^<input 4>: "):
        load_image(ImageItem(arr, "<input 4>"))


def test_numpy_batch_layout_error_at_expand():
    with pytest.raises(ImageInputError, match=r"use a.transpose\(0, 2, 3, 1\)"):
        expand_inputs(np.zeros((2, 3, 8, 8), np.float32))


# ---------------------------------------------------------------------------------------------------
# torch


def marked(shape_hwc: tuple[int, int, int], batch: int, dtype=torch.float32) -> torch.Tensor:
    """[B, H, W, C] zeros with pixel (row 1, col 2) of image b set to (b+1)/10 in channel 0, 0.6 in the last."""
    t = torch.zeros(batch, *shape_hwc)
    for b in range(batch):
        t[b, 1, 2, 0] = (b + 1) / 10
        if shape_hwc[2] > 1:
            t[b, 1, 2, -1] = 0.6 if shape_hwc[2] == 3 else 1.0
    return t.to(dtype)


def expected_marked(b: int, channels: int) -> tuple[int, int, int]:
    v = round((b + 1) / 10 * 255)
    if channels == 1:
        return (v, v, v)
    return (v, 0, 153) if channels == 3 else (v, 0, 0)


TORCH_CASES = [
    # id, tensor factory, number of images, channels
    ("bchw-float", lambda: marked((5, 7, 3), 2).permute(0, 3, 1, 2).contiguous(), 2, 3),
    ("bhwc-float-comfyui", lambda: marked((5, 7, 3), 2), 2, 3),
    (
        "bhwc-permuted-view",
        lambda: marked((5, 7, 3), 2).permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1),
        2,
        3,
    ),
    ("chw-float", lambda: marked((5, 7, 3), 1)[0].permute(2, 0, 1), 1, 3),
    ("hwc-float", lambda: marked((5, 7, 3), 1)[0], 1, 3),
    ("hw-float", lambda: marked((5, 7, 1), 1)[0, :, :, 0], 1, 1),
    ("bchw-one-channel", lambda: marked((5, 7, 1), 3).permute(0, 3, 1, 2), 3, 1),
    ("bhwc-rgba", lambda: marked((5, 7, 4), 2), 2, 4),
    (
        "bfloat16",
        lambda: marked((5, 7, 3), 2, torch.bfloat16).permute(0, 3, 1, 2),
        2,
        3,
    ),
    ("float16", lambda: marked((5, 7, 3), 2, torch.float16).permute(0, 3, 1, 2), 2, 3),
    ("float64", lambda: marked((5, 7, 3), 2, torch.float64).permute(0, 3, 1, 2), 2, 3),
    (
        "requires-grad",
        lambda: marked((5, 7, 3), 2).permute(0, 3, 1, 2).requires_grad_(),
        2,
        3,
    ),
    ("non-leaf-grad", lambda: marked((5, 7, 3), 2).requires_grad_() * 1.0, 2, 3),
]


@pytest.mark.parametrize(
    ("factory", "count", "channels"),
    [c[1:] for c in TORCH_CASES],
    ids=[c[0] for c in TORCH_CASES],
)
def test_torch_inputs(factory, count, channels):
    t = factory()
    items = expand_inputs(t)
    assert [i.name for i in items] == [f"<input {b}>" for b in range(count)]
    for b, item in enumerate(items):
        im = load_image(item)
        assert_rgb(im, (7, 5))
        assert_close(im.getpixel((2, 1)), expected_marked(b, channels), tol=2)
        assert im.getpixel((0, 0)) == (0, 0, 0) or channels == 4


@pytest.mark.parametrize(
    ("tensor", "pixel"),
    [
        (torch.full((2, 3, 5, 6), 0.5), (128, 128, 128)),
        (torch.full((3, 5, 6), 128, dtype=torch.uint8), (128, 128, 128)),
        (torch.ones((5, 6, 1), dtype=torch.bool), WHITE),
        (torch.full((5, 6, 3), 25700, dtype=torch.uint16), (100, 100, 100)),
    ],
    ids=["float", "uint8", "bool", "uint16"],
)
def test_torch_dtypes(tensor, pixel):
    for item in expand_inputs(tensor):
        im = load_image(item)
        assert_rgb(im, (6, 5))
        assert_close(im.getpixel((5, 4)), pixel)


def test_torch_uint8_output_is_not_aliased():
    t = torch.full((5, 6, 3), 10, dtype=torch.uint8)
    im = load_image(t)
    t.zero_()
    assert im.getpixel((0, 0)) == (10, 10, 10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_on_gpu():
    t = torch.rand(2, 3, 8, 8, device="cuda", requires_grad=True)
    ims = [load_image(item) for item in expand_inputs(t)]
    expected = np.rint(t[1].detach().permute(1, 2, 0).cpu().numpy() * 255)
    assert np.abs(np.asarray(ims[1]).astype(float) - expected).max() <= 1


TORCH_ERROR_CASES = [
    # id, shape, dtype, match
    (
        "ambiguous-4d",
        (2, 3, 4, 3),
        torch.float32,
        r"is ambiguous: it could be BCHW or BHWC.*list of PIL images, or permute",
    ),
    ("ambiguous-3d", (3, 4, 3), torch.float32, "ambiguous: it could be CHW or HWC"),
    ("ambiguous-ones", (1, 8, 1), torch.float32, "ambiguous"),
    (
        "two-channels",
        (2, 2, 8, 8),
        torch.float32,
        r"shape \[2, 2, 8, 8\] has no channel axis of size 1, 3 or 4",
    ),
    (
        "five-channels",
        (8, 8, 5),
        torch.float32,
        "channel counts 2 and 5\\+ are not supported",
    ),
    (
        "rank-1",
        (8,),
        torch.float32,
        r"shape \[8\] is 1-D; expected HW, CHW, HWC, BCHW or BHWC",
    ),
    ("rank-5", (1, 2, 3, 8, 8), torch.float32, r"is 5-D"),
    (
        "zero-height",
        (1, 3, 0, 8),
        torch.float32,
        r"shape \[1, 3, 0, 8\] has a zero-size dimension",
    ),
    ("zero-width-3d", (8, 0, 3), torch.float32, "zero-size"),
]


@pytest.mark.parametrize(
    ("shape", "dtype", "match"),
    [c[1:] for c in TORCH_ERROR_CASES],
    ids=[c[0] for c in TORCH_ERROR_CASES],
)
def test_torch_shape_errors(shape, dtype, match):
    t = torch.zeros(shape, dtype=dtype)
    with pytest.raises(ImageInputError, match=match):
        expand_inputs(t)
    with pytest.raises(ImageInputError, match=match):
        load_image(t)


TORCH_VALUE_CASES = [
    (
        "[-1,1]",
        torch.linspace(-1, 1, 90).reshape(1, 3, 5, 6),
        r"map with \(x \+ 1\) / 2",
    ),
    ("0..255", torch.full((1, 3, 5, 6), 255.0), "divide by 255"),
    ("nan", torch.full((1, 3, 5, 6), float("nan")), "NaN"),
    ("nan-bf16", torch.full((1, 3, 5, 6), float("nan"), dtype=torch.bfloat16), "NaN"),
    (
        "int64",
        torch.zeros((1, 3, 5, 6), dtype=torch.int64),
        "unsupported tensor dtype torch.int64",
    ),
    ("batch-to-load-image", torch.zeros((2, 3, 5, 6)), "batch of 2 images"),
]


@pytest.mark.parametrize(
    ("tensor", "match"),
    [c[1:] for c in TORCH_VALUE_CASES],
    ids=[c[0] for c in TORCH_VALUE_CASES],
)
def test_torch_value_errors(tensor, match):
    with pytest.raises(ImageInputError, match=match):
        load_image(tensor)


def test_value_error_hits_only_its_own_image():
    t = torch.full((3, 3, 5, 6), 0.5)
    t[1, 0, 0, 0] = float("nan")
    results = []
    for item in expand_inputs(t):
        try:
            results.append(load_image(item).size)
        except ImageInputError as err:
            results.append(str(err).split(":")[0])
    assert results == [(6, 5), "<input 1>", (6, 5)]


@pytest.mark.parametrize(
    "batch",
    [
        torch.zeros((0, 64, 64, 3)),
        torch.zeros((0, 3, 64, 64)),
        np.zeros((0, 8, 8, 3), np.float32),
    ],
    ids=["comfyui-empty", "bchw-empty", "numpy-empty"],
)
def test_empty_batch_gives_no_items(batch):
    assert expand_inputs(batch) == []
    assert expand_inputs([batch, Image.new("RGB", (2, 2))])[0].name == "<input 0>"


# ---------------------------------------------------------------------------------------------------
# expand_inputs


def make_tree(root: Path) -> None:
    for rel in [
        "b.png",
        "a.JPG",
        "c.WebP",
        "d.txt",
        "e.jpeg.bak",
        ".hidden.png",
        "._f.jpg",
        "sub/g.png",
        "sub/deeper/h.TIFF",
        ".git/i.png",
    ]:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith((".txt", ".bak")):
            path.write_text("not an image")
        else:
            Image.new("RGB", (2, 2)).save(path, format="PNG")
    (root / "folder.png").mkdir()  # a folder with an image extension is not a file


@pytest.mark.parametrize(
    ("recursive", "expected"),
    [
        (False, ["a.JPG", "b.png", "c.WebP"]),
        (True, ["a.JPG", "b.png", "c.WebP", "sub/deeper/h.TIFF", "sub/g.png"]),
    ],
    ids=["flat", "recursive"],
)
@pytest.mark.parametrize("as_path", [False, True], ids=["str", "Path"])
def test_expand_folder(tmp_path, recursive, expected, as_path):
    make_tree(tmp_path)
    root = tmp_path if as_path else str(tmp_path)
    items = expand_inputs(root, recursive=recursive)
    want = [os.path.join(str(tmp_path), *rel.split("/")) for rel in expected]
    assert [i.name for i in items] == want
    assert [i.source for i in items] == want
    assert all(load_image(i).size == (2, 2) for i in items)


@pytest.mark.parametrize("content", [[], ["notes.txt", "data.json"]], ids=["empty", "no-images"])
def test_folder_without_images_gives_nothing(tmp_path, caplog, content):
    for name in content:
        (tmp_path / name).write_text("x")
    with caplog.at_level(logging.WARNING, logger="feval_core.inputs.images"):
        assert expand_inputs(tmp_path) == []
    assert "folder holds no image files" in caplog.text


def test_folder_without_images_in_a_list_keeps_the_rest(tmp_path):
    pil = Image.new("RGB", (2, 2))
    items = expand_inputs([tmp_path, pil])
    assert items == [ImageItem(pil, "<input 0>")]


def test_nonexistent_path_is_one_item_that_fails_alone(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (3, 3)).save(good)
    missing = tmp_path / "missing.png"
    items = expand_inputs([missing, good])
    assert [i.name for i in items] == [str(missing), str(good)]
    assert items[0].source is missing
    with pytest.raises(ImageInputError, match="missing.png: file not found"):
        load_image(items[0])
    assert load_image(items[1]).size == (3, 3)


def test_expand_mixed_list_keeps_order_and_names(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(path)
    pil = Image.new("L", (4, 4), 50)
    arr = np.full((2, 4, 4, 3), 0.25, np.float32)
    tb = torch.full((2, 3, 5, 6), 0.75)
    single = torch.full((5, 6, 3), 0.5)
    items = expand_inputs((str(path), pil, arr, tb, single))
    assert [i.name for i in items] == [str(path)] + [f"<input {k}>" for k in range(1, 7)]
    pixels = [load_image(i).getpixel((0, 0)) for i in items]
    assert pixels == [
        (1, 2, 3),
        (50, 50, 50),
        (64, 64, 64),
        (64, 64, 64),
        (191, 191, 191),
        (191, 191, 191),
        (128, 128, 128),
    ]


def test_single_inputs_without_a_list(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(path)
    assert [i.name for i in expand_inputs(path)] == [str(path)]
    assert [i.name for i in expand_inputs(Image.new("RGB", (2, 2)))] == ["<input 0>"]
    assert len(expand_inputs(np.zeros((4, 4, 3), np.uint8))) == 1
    assert len(expand_inputs(torch.zeros(3, 8, 8))) == 1
    assert expand_inputs([]) == []


def test_batches_are_split_without_copying():
    arr = np.zeros((3, 4, 4, 3), np.uint8)
    t = torch.zeros(3, 3, 5, 6)
    items = expand_inputs([arr, t])
    for b in range(3):
        assert np.shares_memory(items[b].source, arr)
        assert items[b].source.base is arr
        assert items[3 + b].source.data_ptr() == t[b].data_ptr()
        assert items[3 + b].source.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (None, "unsupported input type NoneType"),
        (3, "unsupported input type int"),
        ({"image": "a.png"}, "unsupported input type dict"),
        (
            b"\x89PNG...",
            r"encoded bytes; open them with PIL.Image.open\(io.BytesIO\(data\)\)",
        ),
        ([["a.png"]], "nested lists are not supported"),
    ],
    ids=["none", "int", "dict", "bytes", "nested"],
)
def test_unsupported_types(value, match):
    with pytest.raises(ImageInputError, match=match):
        expand_inputs(value)
    if not isinstance(value, list):
        with pytest.raises(ImageInputError, match=match):
            load_image(value)


def test_load_image_refuses_a_list():
    with pytest.raises(ImageInputError, match="split lists with expand_inputs"):
        load_image([Image.new("RGB", (2, 2))])


def test_import_does_not_load_torch():
    code = "import sys, feval_core.inputs.images; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_image_extensions():
    assert IMAGE_EXTENSIONS == frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


# ---------------------------------------------------------------------------------------------------
# check_same_length / broadcast


def test_check_same_length_message():
    with pytest.raises(
        InputMismatchError,
        match=r"^got 3 images but 2 prompts; pass one prompt per image or a single prompt for all$",
    ):
        check_same_length("images", [1, 2, 3], "prompts", ["a", "b"])
    check_same_length("images", [1, 2], "prompts", ("a", "b"))
    check_same_length("images", 2, "refs", ["a", "b"])
    with pytest.raises(InputMismatchError, match="got 2 images but 3 refs; pass one ref per image"):
        check_same_length("images", 2, "refs", 3)


PIL_REF = Image.new("RGB", (2, 2))
ARR3 = np.zeros((4, 4, 3), np.uint8)
T3 = torch.zeros(3, 4, 4)
T4 = torch.arange(3 * 3 * 2 * 2, dtype=torch.float32).reshape(3, 3, 2, 2)
T4_ONE = torch.zeros(1, 3, 5, 6)
NP4 = np.zeros((2, 4, 4, 3), np.uint8)

BROADCAST_CASES = [
    # id, value, n, expected (list of objects compared with `is` or ==)
    ("none", None, 3, [None, None, None]),
    ("string", "a cat", 3, ["a cat"] * 3),
    ("list-of-one", ["a cat"], 3, ["a cat"] * 3),
    ("list-of-n", ["a", "b", "c"], 3, ["a", "b", "c"]),
    ("tuple-of-n", ("a", "b"), 2, ["a", "b"]),
    ("path", Path("ref.png"), 2, [Path("ref.png")] * 2),
    ("pil", PIL_REF, 2, [PIL_REF, PIL_REF]),
    ("array-3d", ARR3, 2, [ARR3, ARR3]),
    ("tensor-3d", T3, 3, [T3, T3, T3]),
    ("n-zero", ["a"], 0, []),
    ("none-zero", None, 0, []),
]


@pytest.mark.parametrize(
    ("value", "n", "expected"),
    [c[1:] for c in BROADCAST_CASES],
    ids=[c[0] for c in BROADCAST_CASES],
)
def test_broadcast(value, n, expected):
    out = broadcast(value, n, "prompts")
    assert isinstance(out, list)
    assert len(out) == len(expected)
    assert all(a is b or a == b for a, b in zip(out, expected, strict=True))


def test_broadcast_batches_per_image():
    out = broadcast(T4, 3, "refs")
    assert len(out) == 3
    assert all(torch.equal(o, T4[b]) and o.shape == (3, 2, 2) for b, o in enumerate(out))
    one = broadcast(T4_ONE, 3, "refs")
    assert len(one) == 3 and all(o.shape == (3, 5, 6) for o in one)
    per = broadcast(NP4, 2, "refs")
    assert [o.shape for o in per] == [(4, 4, 3), (4, 4, 3)]


@pytest.mark.parametrize(
    ("value", "n", "match"),
    [
        (
            ["a", "b"],
            3,
            r"^got 3 images but 2 prompts; pass one prompt per image or a single prompt for all$",
        ),
        ([], 2, "got 2 images but 0 prompts"),
        (T4, 2, "got 2 images but 3 prompts"),
        (NP4, 3, "got 3 images but 2 prompts"),
    ],
    ids=["short-list", "empty-list", "tensor-batch", "array-batch"],
)
def test_broadcast_mismatch(value, n, match):
    with pytest.raises(InputMismatchError, match=match):
        broadcast(value, n, "prompts")
