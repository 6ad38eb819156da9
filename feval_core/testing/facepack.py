"""A tiny, deterministic insightface model pack built offline with ``onnx.helper`` (tests, CI, smoke runs).

``write_tiny_face_pack(root)`` writes ``<root>/models/tiny_face/{det_tiny,rec_tiny}.onnx``. insightface's
model zoo routes them like a real pack: the detector as SCRFD (9 outputs, strides 8/16/32, 2 anchors, key
points), the recognizer as ArcFaceONNX (1x3x112x112 -> 512). Both are small hand-built graphs, not trained
networks, but they react to image content in a documented way, so tests can draw faces and know the answer.

What the tiny detector calls a face
-----------------------------------
A compact **bright patch on a dark surround**. "Bright" means mean(R, G, B) >= 128, "dark" < 96 (a ramp in
between). Any such patch is a face, a plain white square included, when, at detector scale (the image is
resized to fit ``det_size``):

* its side is about 20-440 px (at the default 640x640: ~3%-65% of the image's longer side);
* its bright pixels fill at least ~70% of its box: squares, rectangles up to 2:1, discs (whose box comes
  out ~15% smaller than the disc); not bars, rings or scattered dots;
* there are no other bright pixels within about half a side of its edges (outside the image counts as
  dark, so faces may touch the image border).

Flat images, noise, edges, corners and long bars give no face. On a **bright background** the background
itself can form such patches (e.g. pieces cut off by the dark frame and the image edge), so draw test faces
on a dark background when you count them. The box is measured from the patch (area, centroid and second
moments on an 8-px grid), so it matches a drawn rectangle to ~1-2 px; the score is ~0.95 for a clean patch.
The five key points sit at the ArcFace template positions inside that box, so ``norm_crop`` maps the patch
onto the whole 112x112 crop.

What the tiny recognizer sees
-----------------------------
The mean colours of the central halves of a 4x4 grid over the 112x112 crop (48 numbers), centred, projected
to 512 dimensions by a fixed seeded matrix. ``draw_tiny_face`` paints a seeded 4x4 grid of light colours, so
the same seed gives the same identity at any place and size (cosine > 0.99 from ~30 px up) and different
seeds give unrelated identities (cosine ~0 +- 0.3).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["TINY_PACK_NAME", "draw_tiny_face", "write_tiny_face_pack"]

logger = logging.getLogger(__name__)

TINY_PACK_NAME = "tiny_face"
DET_FILE = "det_tiny.onnx"
REC_FILE = "rec_tiny.onnx"
EMBEDDING_DIM = 512

_OPSET = 17
_IR_VERSION = 8  # readable by every onnxruntime that supports opset 17
_CELL = 8  # the detector works on 8x8-pixel cell means
# scale (px) of each anchor per stride: it measures a face inside +-0.75 x scale and checks the ring to 0.95 x
_FACE_SIDES = {8: (48, 72), 16: (96, 144), 32: (192, 288)}
_INNER, _OUTER = 0.75, 0.95  # half-widths (x face side) of the measuring window and of the dark-ring check
_FILL_MIN = 0.7  # bright area / measured box area
_RING_MAX = 0.1  # bright mass in the ring / bright mass in the window
_SIZE_MIN = 0.2  # measured box area / side^2 of the scale
_ASPECT_MIN = 0.4  # short side / long side of the measured box
_SCORE_GAIN = 3.0
_BRIGHT_LO, _BRIGHT_HI = 0.75, 1.0  # ramp on v = mean RGB / 128 for "face pixels" (mean RGB 96 -> 0, 128 -> 1)

# ArcFace template (insightface.utils.face_align.arcface_dst), 112x112 crop coordinates.
_ARCFACE_DST = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)

_GRID = 4  # identity pattern / recognizer grid
_FACE_COLOR_RANGE = (170, 256)
_SURROUND_COLOR = 12
DETECTOR_OUTPUTS = (("score", 1), ("bbox", 4), ("kps", 10))  # SCRFD output kinds and widths


class _GraphBuilder:
    """Collects nodes and initializers with unique, readable names."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, kind: str) -> str:
        self._count += 1
        return f"{self.prefix}_{kind}_{self._count}"

    def const(self, value: np.ndarray | float | list[int], dtype: type = np.float32) -> str:
        name = self._name("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs: object) -> str:
        name = self._name(op_type.lower())
        out = output or f"{name}_out"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out

    def model(self, name: str, inputs: list, outputs: list) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="feval-tiny-face"
        )
        model.ir_version = _IR_VERSION
        onnx.checker.check_model(model)
        return model


def _cell_centers(n: int) -> np.ndarray:
    """Pixel x of the centres of the 2n cells around an anchor point (cells -n..n-1)."""
    return _CELL * np.arange(-n, n, dtype=np.float64) + _CELL / 2


def _window_taps(n: int, half: float) -> np.ndarray:
    """Per-cell weight (px) of the box [-half, half) around an anchor point: the overlap of each cell with it."""
    x = _cell_centers(n)
    return np.clip(np.minimum(x + _CELL / 2, half) - np.maximum(x - _CELL / 2, -half), 0.0, _CELL)


def _detector_anchor(g: _GraphBuilder, bright: str, side: int, step: int) -> tuple[str, str]:
    """Score map (1,1,h,w) and box features [cx, cy, w, h] (1,4,h,w) for faces of about ``side`` px.

    Sums of the bright map over an inner window (+-0.75 side) give the face's area, centroid and second
    moments; an outer window (+-0.95 side) checks the ring between them is dark. The score is high when
    the ring is empty, the bright pixels fill their measured box, the box is not tiny for this scale and
    not much longer than 2:1.
    """
    n = math.ceil(_OUTER * side / _CELL) + 1
    x = _cell_centers(n)
    inner, outer = _window_taps(n, _INNER * side), _window_taps(n, _OUTER * side)
    h_taps = [inner, x * inner, x * x * inner, inner, inner, outer]
    v_taps = [inner, inner, inner, x * inner, x * x * inner, outer]
    wh = np.stack(h_taps)[:, None, None, :]
    wv = np.stack(v_taps)[:, None, :, None]
    rows = g.op("Conv", [bright, g.const(wh)], pads=[0, n, 0, n - 1], strides=[1, step])
    sums = g.op("Conv", [rows, g.const(wv)], group=len(h_taps), pads=[n, 0, n - 1, 0], strides=[step, 1])

    channel_axis = g.const([1], np.int64)

    def channel(index: int) -> str:
        start, stop = g.const([index], np.int64), g.const([index + 1], np.int64)
        return g.op("Slice", [sums, start, stop, channel_axis])

    area = g.op("Add", [channel(0), g.const(1.0)])  # px^2, +1 keeps empty windows finite
    ring = g.op("Div", [g.op("Sub", [channel(5), channel(0)]), area])  # bright mass in the ring / face area
    features = []
    for first, second in ((1, 2), (3, 4)):
        mean = g.op("Div", [channel(first), area])
        var = g.op("Sub", [g.op("Div", [channel(second), area]), g.op("Mul", [mean, mean])])
        # 12*var = side^2 for a uniform patch; + cell^2 undoes the cell-centre quantisation
        extent = g.op("Add", [g.op("Mul", [var, g.const(12.0)]), g.const(float(_CELL * _CELL))])
        features.append((mean, g.op("Sqrt", [g.op("Max", [extent, g.const(1.0)])])))
    (cx, w), (cy, h) = features
    box_area = g.op("Mul", [w, h])
    fill = g.op("Div", [channel(0), box_area])
    size = g.op("Div", [box_area, g.const(float(side * side))])
    aspect = g.op("Div", [g.op("Min", [w, h]), g.op("Max", [w, h])])

    # each test is scaled to 0 at its limit and 1 at a comfortable value; the score is capped at sigmoid(gain)
    # so that every anchor that sees the whole face ties, rather than clipped views winning on some test
    def test(value: str, limit: float, comfortable: float) -> str:
        return g.op("Mul", [g.op("Sub", [value, g.const(limit)]), g.const(1.0 / (comfortable - limit))])

    margin = g.op(
        "Min",
        [
            test(fill, _FILL_MIN, _FILL_MIN + 0.2),
            test(ring, _RING_MAX, 0.0),
            test(size, _SIZE_MIN, 2 * _SIZE_MIN),
            test(aspect, _ASPECT_MIN, _ASPECT_MIN + 0.2),
            g.const(1.0),
        ],
    )
    score = g.op("Sigmoid", [g.op("Mul", [margin, g.const(_SCORE_GAIN)])])
    return score, g.op("Concat", [cx, cy, w, h], axis=1)


def _box_and_kps_weights(stride: int, anchors: int) -> tuple[np.ndarray, np.ndarray]:
    """1x1-conv weights from per-anchor [cx, cy, w, h] to distances (l,t,r,b) and 5 key points, / stride."""
    box = np.zeros((4 * anchors, 4 * anchors, 1, 1))
    kps = np.zeros((10 * anchors, 4 * anchors, 1, 1))
    rel = _ARCFACE_DST / 112.0 - 0.5
    for a in range(anchors):
        cx, cy, w, h = 4 * a, 4 * a + 1, 4 * a + 2, 4 * a + 3
        for j, (src, sign, ext) in enumerate(((cx, -1, w), (cy, -1, h), (cx, 1, w), (cy, 1, h))):
            box[4 * a + j, src], box[4 * a + j, ext] = sign, 0.5
        for p in range(5):
            kps[10 * a + 2 * p, cx], kps[10 * a + 2 * p, w] = 1.0, rel[p, 0]
            kps[10 * a + 2 * p + 1, cy], kps[10 * a + 2 * p + 1, h] = 1.0, rel[p, 1]
    return box / stride, kps / stride


def detector_outputs(g: _GraphBuilder, image: str, suffix: str = "") -> dict[str, list[str]]:
    """Add the tiny detector's nodes to ``g`` on input ``image``; returns its SCRFD outputs per kind, stride 8/16/32
    (``score`` [n, 1], ``bbox`` [n, 4], ``kps`` [n, 10]), named ``<kind>_<stride><suffix>``."""
    # v = mean(R, G, B) / 128, in ~[0, 2]
    v = g.op("Conv", [image, g.const(np.full((1, 3, 1, 1), 1.0 / 3.0)), g.const([1.0])])
    ramp = g.op("Mul", [g.op("Sub", [v, g.const(_BRIGHT_LO)]), g.const(1.0 / (_BRIGHT_HI - _BRIGHT_LO))])
    bright_pix = g.op("Clip", [ramp, g.const(0.0), g.const(1.0)])
    bright = g.op("AveragePool", [bright_pix], kernel_shape=[_CELL, _CELL], strides=[_CELL, _CELL])

    outputs: dict[str, list[str]] = {"score": [], "bbox": [], "kps": []}
    for stride, sides in _FACE_SIDES.items():
        results = [_detector_anchor(g, bright, side, stride // _CELL) for side in sides]
        scores = g.op("Concat", [s for s, _ in results], axis=1)
        feats = g.op("Concat", [f for _, f in results], axis=1)
        box_w, kps_w = _box_and_kps_weights(stride, len(sides))
        maps = {
            "score": scores,
            "bbox": g.op("Conv", [feats, g.const(box_w)]),
            "kps": g.op("Conv", [feats, g.const(kps_w)]),
        }
        for key, width in DETECTOR_OUTPUTS:
            nhwc = g.op("Transpose", [maps[key]], perm=[0, 2, 3, 1])
            outputs[key].append(
                g.op("Reshape", [nhwc, g.const([-1, width], np.int64)], output=f"{key}_{stride}{suffix}")
            )
    return outputs


def detector_value_infos(outputs: dict[str, list[str]]) -> list[onnx.ValueInfoProto]:
    """Graph outputs in the order insightface's SCRFD reads them: scores, boxes, key points; stride 8, 16, 32."""
    return [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"n{stride}", width])
        for key, width in DETECTOR_OUTPUTS
        for name, stride in zip(outputs[key], _FACE_SIDES)
    ]


def _build_detector() -> onnx.ModelProto:
    g = _GraphBuilder("det")
    image = "input.1"  # (1,3,H,W), (RGB - 127.5) / 128 as insightface's SCRFD feeds it
    outputs = detector_outputs(g, image)
    inputs = [helper.make_tensor_value_info(image, TensorProto.FLOAT, [1, 3, "height", "width"])]
    return g.model("tiny_scrfd", inputs, detector_value_infos(outputs))


def _build_recognizer(seed: int) -> onnx.ModelProto:
    g = _GraphBuilder("rec")  # node names must not start with Sub/Mul (insightface's mxnet-model sniffing)
    image = "input.1"  # (N,3,112,112), (RGB - 127.5) / 127.5
    # mean colour of the central half of each of the 4x4 cells: tolerant to a quarter-cell misalignment
    cell = 112 // _GRID
    lo, hi = g.const([cell // 4] * 2, np.int64), g.const([112 - cell // 4] * 2, np.int64)
    middle = g.op("Slice", [image, lo, hi, g.const([2, 3], np.int64)])
    cells = g.op("AveragePool", [middle], kernel_shape=[cell // 2] * 2, strides=[cell] * 2)
    flat = g.op("Flatten", [cells], axis=1)
    centred = g.op("Sub", [flat, g.op("ReduceMean", [flat], axes=[1], keepdims=1)])
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((3 * _GRID * _GRID, EMBEDDING_DIM)) / math.sqrt(3 * _GRID * _GRID)
    g.op("MatMul", [centred, g.const(proj)], output="embedding")
    inputs = [helper.make_tensor_value_info(image, TensorProto.FLOAT, ["batch", 3, 112, 112])]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", EMBEDDING_DIM])]
    return g.model("tiny_arcface", inputs, outputs)


def write_tiny_face_pack(root: str | Path, name: str = TINY_PACK_NAME, seed: int = 0) -> Path:
    """Write a tiny detector + recognizer pack to ``<root>/models/<name>/`` and return that folder.

    Load it with ``FaceEncoder(pack=name, root=root)`` or ``insightface.app.FaceAnalysis(name=name, root=root)``.
    ``seed`` fixes the recognizer's projection; the detector has no random weights. The two files take ~150 KB.
    """
    pack_dir = Path(root).expanduser() / "models" / name
    pack_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(_build_detector(), str(pack_dir / DET_FILE))
    onnx.save(_build_recognizer(seed), str(pack_dir / REC_FILE))
    logger.debug("wrote tiny face pack to %s", pack_dir)
    return pack_dir


def draw_tiny_face(
    image: np.ndarray, box: tuple[int, int, int, int], seed: int = 0, *, margin: float = 0.75
) -> np.ndarray:
    """Return a copy of an RGB uint8 image with a face the tiny pack detects painted in ``box`` (x1, y1, x2, y2).

    The box is filled with a 4x4 grid of light colours chosen by ``seed`` (the identity; every pixel's mean
    RGB is >= 170), after a dark frame of ``margin`` x the longer side is painted around it (clipped to the
    image). Draw on a dark background, keep faces about a frame apart (a later frame paints over earlier
    faces), and keep the side within the detector's range (see the module docstring).
    """
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"draw_tiny_face needs an HxWx3 uint8 RGB array; got shape {array.shape}, dtype {array.dtype}")
    x1, y1, x2, y2 = (round(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"box must be (x1, y1, x2, y2) with x2 > x1 and y2 > y1; got {box}")
    out = array.copy()
    height, width = out.shape[:2]
    pad = round(margin * max(x2 - x1, y2 - y1))
    out[max(0, y1 - pad) : max(0, y2 + pad), max(0, x1 - pad) : max(0, x2 + pad)] = _SURROUND_COLOR
    colors = np.random.default_rng(seed).integers(*_FACE_COLOR_RANGE, size=(_GRID, _GRID, 3), dtype=np.uint8)
    rows = ((np.arange(y1, y2) - y1) * _GRID) // (y2 - y1)
    cols = ((np.arange(x1, x2) - x1) * _GRID) // (x2 - x1)
    patch = colors[rows][:, cols]
    ys, xs = slice(max(0, y1), min(height, y2)), slice(max(0, x1), min(width, x2))
    out[ys, xs] = patch[ys.start - y1 : ys.stop - y1, xs.start - x1 : xs.stop - x1]
    return out
