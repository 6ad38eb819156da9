"""Property tests for feval_core.inputs.images: random arrays, tensors, PIL images and corrupted files.

For every input, ``expand_inputs`` + ``load_image`` either give RGB images whose count, size and pixels
follow the documented layout rules, or raise ImageInputError; never another exception.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from feval_core.errors import ImageInputError
from feval_core.inputs.images import expand_inputs, load_image

CHANNELS = (1, 3, 4)
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

NUMPY_DTYPES = [
    np.uint8,
    np.uint16,
    np.float16,
    np.float32,
    np.float64,
    np.bool_,
    np.int32,
]
TORCH_DTYPES = {
    np.uint8: torch.uint8,
    np.uint16: torch.uint16,
    np.float16: torch.float16,
    np.float32: torch.float32,
    np.float64: torch.float64,
    np.bool_: torch.bool,
    np.int32: torch.int32,
}
VALUE_RANGES = [
    "unit",
    "unit",
    "unit",
    "unit+noise",
    "minus1..1",
    "0..255",
    "nan",
    "wild",
]


@st.composite
def raw_arrays(draw) -> tuple[np.ndarray, str]:
    """A random array (an image layout with random sizes, or any shape of rank 1..5 with dims 0..9)
    and how its values were made."""
    template = draw(st.sampled_from(["HW", "HWC", "CHW", "BHWC", "BCHW", "random", "random"]))
    if template == "random":
        rank = draw(st.integers(1, 5))
        shape = tuple(draw(st.lists(st.integers(0, 9), min_size=rank, max_size=rank)))
    else:
        side = st.sampled_from(range(1, 10))
        sizes = {"B": st.sampled_from([1, 2, 3, 0]), "H": side, "W": side}
        sizes["C"] = st.sampled_from(CHANNELS)
        shape = tuple(draw(sizes[axis]) for axis in template)
    dtype = draw(st.sampled_from(NUMPY_DTYPES))
    values = draw(st.sampled_from(VALUE_RANGES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype == np.bool_:
        arr = rng.random(shape) < 0.5
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        arr = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    else:
        base = rng.random(shape)
        if values == "unit+noise":
            base = base * 1.0008 - 0.0004  # inside the 1e-3 tolerance
        elif values == "minus1..1":
            base = base * 2 - 1
        elif values == "0..255":
            base = base * 255
        elif values == "wild":
            base = (base - 0.5) * 1e4
        elif values == "nan" and base.size:
            base.flat[rng.integers(base.size)] = rng.choice([np.nan, np.inf, -np.inf])
        arr = base.astype(dtype)
    return arr, values


def expected_layout(shape: tuple[int, ...], is_torch: bool) -> str | None:
    """The documented layout rules, written out independently; None means the shape must be refused."""
    if len(shape) not in (2, 3, 4) or 0 in shape:
        return None
    if len(shape) == 2:
        return "HW"
    batch = "B" if len(shape) == 4 else ""
    first, last = shape[-3] in CHANNELS, shape[-1] in CHANNELS
    if not is_torch:
        return batch + "HWC" if last else None
    if first == last:  # both candidates (ambiguous) or neither
        return None
    return batch + ("CHW" if first else "HWC")


def to_hwc_images(arr: np.ndarray, layout: str) -> list[np.ndarray]:
    """Per-image [H, W, C] arrays from ``arr`` in ``layout``."""
    batch = list(arr) if layout.startswith("B") else [arr]
    core = layout.lstrip("B")
    if core == "HW":
        return [a[:, :, None] for a in batch]
    if core == "CHW":
        return [a.transpose(1, 2, 0) for a in batch]
    return batch


def values_ok(arr: np.ndarray) -> bool:
    if arr.dtype in (np.uint8, np.uint16, np.bool_):
        return True
    if arr.dtype == np.int32:
        return False
    wide = arr.astype(np.float64)
    return bool(np.isfinite(wide).all() and wide.min() >= -1e-3 and wide.max() <= 1 + 1e-3)


def expected_u8(pixel: np.ndarray) -> np.ndarray:
    """One pixel (C values) as the RGB a user expects: 8-bit, grey expanded, alpha over white."""
    if pixel.dtype == np.bool_:
        v = pixel.astype(np.float64) * 255
    elif pixel.dtype == np.uint8:
        v = pixel.astype(np.float64)
    elif pixel.dtype == np.uint16:
        v = pixel.astype(np.float64) / 257
    else:
        v = np.clip(pixel.astype(np.float64), 0, 1) * 255
    if v.size == 1:
        return np.repeat(v, 3)
    if v.size == 4:
        return v[:3] * v[3] / 255 + 255 * (1 - v[3] / 255)
    return v


def run(source) -> list[Image.Image]:
    return [load_image(item) for item in expand_inputs(source)]


def check_against_oracle(source, arr: np.ndarray, is_torch: bool) -> None:
    shape = arr.shape
    if len(shape) == 4 and shape[0] == 0:
        event("empty batch")
        assert expand_inputs(source) == []
        return
    layout = expected_layout(shape, is_torch)
    images = to_hwc_images(arr, layout) if layout else []
    if layout is None or not all(values_ok(im) for im in images):
        event("refused: " + ("layout" if layout is None else "values"))
        with pytest.raises(ImageInputError):
            run(source)
        return
    event(f"accepted: {layout}")
    out = run(source)
    assert len(out) == len(images)
    for got, want in zip(out, images, strict=True):
        h, w = want.shape[:2]
        assert got.mode == "RGB" and got.size == (w, h)
        got_arr = np.asarray(got).astype(np.float64)
        for y, x in [(0, 0), (h - 1, w - 1), (h // 2, w // 3)]:
            assert np.abs(got_arr[y, x] - expected_u8(want[y, x])).max() <= 1.01, (
                layout,
                y,
                x,
            )


@FUZZ
@given(raw_arrays())
def test_numpy_arrays(case):
    arr, _ = case
    check_against_oracle(arr, arr, is_torch=False)


@FUZZ
@given(raw_arrays(), st.booleans(), st.booleans())
def test_torch_tensors(case, bf16, grad):
    arr, _ = case
    t = torch.from_numpy(arr.copy())
    t = t.to(TORCH_DTYPES[arr.dtype.type])
    if bf16 and t.dtype == torch.float16:
        t = t.to(torch.bfloat16)
        arr = t.float().numpy()  # the values bf16 actually holds
    if grad and t.is_floating_point():
        t.requires_grad_()
    check_against_oracle(t, arr, is_torch=True)


PIL_MODES = [
    "1",
    "L",
    "LA",
    "La",
    "P",
    "PA",
    "RGB",
    "RGBA",
    "RGBa",
    "RGBX",
    "CMYK",
    "YCbCr",
    "HSV",
    "LAB",
]
PIL_MODES += ["I", "I;16", "I;16B", "I;16L", "F"]


@FUZZ
@given(
    st.sampled_from(PIL_MODES),
    st.integers(1, 9),
    st.integers(1, 9),
    st.binary(min_size=9 * 9 * 4, max_size=9 * 9 * 4),
    st.booleans(),
)
def test_pil_images(mode, w, h, data, with_transparency):
    n = len(Image.new(mode, (w, h)).tobytes())
    im = Image.frombytes(mode, (w, h), (data * 2)[:n])
    if with_transparency and mode in ("L", "P", "RGB"):
        im.info["transparency"] = 0 if mode != "RGB" else (0, 0, 0)
    try:
        out = run(im)
    except ImageInputError:
        assert mode in ("I", "F", "La")  # out-of-range I / F values, unconvertible La
        return
    assert len(out) == 1
    assert out[0].mode == "RGB" and out[0].size == (w, h)
    if mode in ("L", "RGB") and "transparency" not in im.info:
        expected = im.convert("RGB").getpixel((w - 1, h - 1))
        assert out[0].getpixel((w - 1, h - 1)) == expected


def _encoded(fmt: str) -> bytes:
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


ENCODED = {fmt: _encoded(fmt) for fmt in ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"]}


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's TIFF reader warns on corrupt metadata
@FUZZ
@given(
    st.sampled_from(sorted(ENCODED)),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
    st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_corrupted_files(tmp_path_factory, fmt, flips, keep):
    data = bytearray(ENCODED[fmt])
    for pos, value in flips:
        data[pos % len(data)] = value
    data = bytes(data if keep is None else data[: keep % (len(data) + 1)])
    path = tmp_path_factory.mktemp("fuzz") / f"img.{fmt.lower()}"
    path.write_bytes(data)
    try:
        im = load_image(str(path))
    except ImageInputError as err:
        event("refused")
        assert str(err).startswith(str(path))
        return
    event("decoded")
    assert im.mode == "RGB" and im.width >= 1 and im.height >= 1
