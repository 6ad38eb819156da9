"""What travels between a reward client and ``feval serve``: one JSON document each way, images as encoded bytes.

Request (``POST /predict``)::

    {"images": [<base64 PNG/JPEG/WebP>, ...], "prompts": [str | null, ...] | null,
     "references": [<base64 image>, ...], "ref_index": [int | null, ...] | null, "dims": ["quality", ...] | null}

A reference used by many images is sent once (``references``) and pointed at (``ref_index``). Response::

    {"scores": [[q, a, i, c], ...] (null = not scored), "faces": [int | null], "errors": [str | null],
     "warnings": [[str]], "missing": [{dimension: reason}]}

Both ends use this module, so a remote score is the scorer's :class:`~feval_core.scoring.result.ScoreResult`
of the same 8-bit pixels (PNG is lossless).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..dimensions import DIMENSIONS, parse_dims
from ..errors import ImageInputError
from ..inputs.decode import DEFAULT_MAX_PIXELS, MAX_SIDE, load_image
from ..scoring.result import ScoreResult

FORMATS = ("PNG", "JPEG", "WEBP")
"""Encodings a server accepts: lossless PNG by default, JPEG/WebP when bandwidth matters more than exactness."""


class WireError(ValueError):
    """A request that does not follow the wire format; the message says what to change."""


@dataclass
class ScoreRequest:
    """One decoded request: images (RGB PIL, or an error message for an image that could not be decoded)."""

    images: list[Any]  # PIL.Image.Image | str (the error)
    prompts: list[str | None]
    refs: list[Any]  # PIL.Image.Image | str (error) | None, one per image (the same object for a shared reference)
    dims: tuple[str, ...]


def encode_image(image: Any, fmt: str = "PNG") -> str:
    """Any single image feval reads (path, PIL, array, tensor in [0, 1]) as base64 ``fmt`` bytes of its RGB
    8-bit pixels, converted exactly as the scorer converts it (:func:`~feval_core.inputs.decode.load_image`)."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    buf = io.BytesIO()
    load_image(image).save(buf, format=fmt, **({"quality": 95} if fmt != "PNG" else {}))
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_image(data: Any, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Base64 image bytes -> RGB PIL image; refuses other formats and images past the size limits before decoding."""
    if not isinstance(data, str):
        raise ImageInputError(f"{name}: expected base64 text, got {type(data).__name__}")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ImageInputError(f"{name}: not base64 ({err}); send base64.b64encode(png_bytes).decode()") from err
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(raw), formats=list(FORMATS))
        w, h = im.size
        if w > MAX_SIDE or h > MAX_SIDE or w * h > max_pixels:
            raise ImageInputError(f"{name}: too large ({w}x{h}); send at most {max_pixels} pixels")
        im.load()
    except ImageInputError:
        raise
    except Exception as err:  # Pillow raises many types on bad data
        raise ImageInputError(f"{name}: not a {'/'.join(FORMATS)} image ({type(err).__name__}: {err})") from err
    return load_image(im)


def encode_request(images: Sequence[str], prompts: Sequence[str | None] | None, references: Sequence[str],
                   ref_index: Sequence[int | None] | None, dims: Sequence[str] | None) -> dict[str, Any]:
    return {"images": list(images), "prompts": None if prompts is None else list(prompts),
            "references": list(references), "ref_index": None if ref_index is None else list(ref_index),
            "dims": None if dims is None else list(dims)}


def parse_request(payload: Any, *, max_images: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> ScoreRequest:
    """Check a request and decode its images. Format errors raise :class:`WireError` (the whole request is
    refused); an image that cannot be decoded becomes its own error row."""
    if not isinstance(payload, dict) or not isinstance(payload.get("images"), list):
        raise WireError('the request must be a JSON object with "images": [base64 image, ...]')
    n = len(payload["images"])
    if not 1 <= n <= max_images:
        raise WireError(f"a request holds 1 to {max_images} images, got {n}; split the batch")
    prompts = _per_image(payload.get("prompts"), n, "prompts")
    if any(p is not None and not isinstance(p, str) for p in prompts):
        raise WireError('"prompts" must be strings or null')
    references = payload.get("references") or []
    if not isinstance(references, list) or len(references) > n:
        raise WireError(f'"references" must be a list of at most {n} base64 images')
    index = _per_image(payload.get("ref_index"), n, "ref_index")
    if any(i is not None and (not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(references))
           for i in index):
        raise WireError(f'"ref_index" entries must be null or an index into "references" (0..{len(references) - 1})')
    try:
        dims = parse_dims(payload.get("dims"))
    except ValueError as err:
        raise WireError(str(err)) from None
    refs = [_decode_or_error(r, f"reference {k}", max_pixels) for k, r in enumerate(references)]
    images = [_decode_or_error(im, f"image {k}", max_pixels) for k, im in enumerate(payload["images"])]
    return ScoreRequest(images, prompts, [None if i is None else refs[i] for i in index], dims)


def _per_image(value: Any, n: int, name: str) -> list[Any]:
    if value is None:
        return [None] * n
    if not isinstance(value, list) or len(value) != n:
        raise WireError(f'"{name}" must be null or a list with one entry per image ({n})')
    return value


def _decode_or_error(data: Any, name: str, max_pixels: int) -> Any:
    try:
        return decode_image(data, name, max_pixels)
    except ImageInputError as err:
        return str(err)


def encode_result(res: ScoreResult) -> dict[str, Any]:
    """A :class:`ScoreResult` as the response document (NaN as null)."""
    return {"scores": [[None if math.isnan(v) else v for v in row] for row in res.scores.tolist()],
            "faces": list(res.faces), "errors": list(res.errors),
            "warnings": [list(w) for w in res.warnings] if res.warnings else [[] for _ in range(len(res))],
            "missing": [dict(m) for m in res.missing] if res.missing else [{} for _ in range(len(res))]}


def decode_result(doc: Any, names: Sequence[str], dims: Sequence[str]) -> ScoreResult:
    """The response document back into a :class:`ScoreResult` (``names``: what the caller calls each image)."""
    try:
        rows = [[math.nan if v is None else float(v) for v in row] for row in doc["scores"]]
        n = len(names)
        if len(rows) != n or any(len(r) != len(DIMENSIONS) for r in rows):
            raise ValueError(f"{len(rows)} score rows for {n} images")
        return ScoreResult(torch.tensor(rows, dtype=torch.float32).reshape(n, len(DIMENSIONS)), list(names),
                           list(doc["faces"]), list(doc["errors"]), [list(w) for w in doc["warnings"]],
                           tuple(dims), [], [dict(m) for m in doc["missing"]])
    except (KeyError, TypeError, ValueError) as err:
        raise WireError(f"the server's answer does not follow the wire format ({err}); are client and server the "
                        "same feval version?") from err
