"""An insightface pack with the compute of the real one (SCRFD-10G detector, iResNet-50 ArcFace), random weights.

Timing ONNX Runtime does not depend on weight values, so a graph with the layers, widths and strides of the
real networks times like the real files (``det_10g.onnx`` and ``w600k_r50.onnx`` of ``buffalo_l``), which
cannot be downloaded here. ``write_sized_face_pack(root)`` writes ``<root>/models/sized_face/``:

* ``det_sized.onnx`` — an SCRFD-10G-class detector: ResNet-v1e deep stem, basic-block stages of
  (3, 4, 2, 3) blocks and (56, 88, 88, 224) channels, a PAFPN neck with 56 channels and per-stride heads of
  three 80-channel 3x3 convolutions over strides 8/16/32, 2 anchors (score, box, 5 key points);
* ``rec_sized.onnx`` — an iResNet-50 ArcFace: (3, 4, 14, 3) improved basic blocks of (64, 128, 256, 512)
  channels with PReLU, a 25088 -> 512 embedding layer (43.6 M parameters, ~175 MB).

Batch norms are folded into the convolutions, as in exported inference graphs. So that scoring pipelines see
the same faces as with the tiny pack (one drawn face is one face, not thousands of random anchors), the
detector's outputs are the tiny detector's (:func:`~feval_core.testing.facepack.detector_outputs`, cheap)
plus 1e-3 x tanh of the real-size heads: every head is computed, and none can move a box by a pixel.
``scale`` shrinks every width (tests build the same graphs at ``scale=1/8`` in a second).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from .facepack import DETECTOR_OUTPUTS, EMBEDDING_DIM, _GraphBuilder, detector_outputs, detector_value_infos

__all__ = ["SIZED_PACK_NAME", "pack_macs", "write_sized_face_pack"]

logger = logging.getLogger(__name__)

SIZED_PACK_NAME = "sized_face"
DET_FILE = "det_sized.onnx"
REC_FILE = "rec_sized.onnx"
SCRFD_10G = {"stem": 28, "stages": (3, 4, 2, 3), "planes": (56, 88, 88, 224), "neck": 56, "head": 80, "stacked": 3}
IRESNET_50 = {"stem": 64, "stages": (3, 4, 14, 3), "planes": (64, 128, 256, 512)}
_HEAD_GAIN = 1e-3  # how much of the real-size heads reaches the outputs (see the module doc)
_ANCHORS = 2


class _Net:
    """A graph builder that tracks (channels, height, width) of each tensor and counts multiply-adds."""

    def __init__(self, prefix: str, seed: int, height: int, width: int) -> None:
        self.g = _GraphBuilder(prefix)
        self.rng = np.random.default_rng(seed)
        self.shape: dict[str, tuple[int, int, int]] = {}
        self.macs = 0
        self.size = (height, width)

    def conv(self, x: str, cout: int, k: int = 3, stride: int = 1, act: str | None = "Relu", gain: float = 1.0) -> str:
        cin, h, w = self.shape[x]
        weight = self.rng.standard_normal((cout, cin, k, k), dtype=np.float32) * gain * math.sqrt(2.0 / (cin * k * k))
        pad = k // 2
        y = self.g.op("Conv", [x, self.g.const(weight), self.g.const(np.zeros(cout, np.float32))],
                      kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
        oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        self.macs += cout * cin * k * k * oh * ow
        self.shape[y] = (cout, oh, ow)
        if act == "Relu":
            y = self._same(self.g.op("Relu", [y]), y)
        elif act == "PRelu":
            slope = self.g.const(np.full((cout, 1, 1), 0.25, np.float32))
            y = self._same(self.g.op("PRelu", [y, slope]), y)
        return y

    def add(self, a: str, b: str) -> str:
        return self._same(self.g.op("Add", [a, b]), a)

    def upsample_to(self, x: str, like: str) -> str:
        c, h, w = self.shape[x]
        _, th, tw = self.shape[like]
        scales = self.g.const([1.0, 1.0, th / h, tw / w], np.float32)
        y = self.g.op("Resize", [x, "", scales], mode="nearest")
        self.shape[y] = (c, th, tw)
        return y

    def _same(self, y: str, x: str) -> str:
        self.shape[y] = self.shape[x]
        return y


def _width(channels: int, scale: float) -> int:
    return max(4, int(round(channels * scale)))


def _scrfd_features(net: _Net, image: str, scale: float) -> list[str]:
    """ResNet-v1e backbone + PAFPN: 56-channel features at strides 8, 16, 32."""
    cfg = SCRFD_10G
    stem = _width(cfg["stem"], scale)
    x = net.conv(image, stem, stride=2)
    x = net.conv(x, stem)
    x = net.conv(x, 2 * stem)
    pooled = net.g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c, h, w = net.shape[x]
    net.shape[pooled] = (c, (h + 1) // 2, (w + 1) // 2)
    x, outs = pooled, []
    for i, (blocks, planes) in enumerate(zip(cfg["stages"], cfg["planes"])):
        planes = _width(planes, scale)
        for b in range(blocks):
            stride = 2 if i > 0 and b == 0 else 1
            y = net.conv(net.conv(x, planes, stride=stride), planes, act=None, gain=0.5)
            short = x if stride == 1 and net.shape[x][0] == planes else net.conv(x, planes, 1, stride, act=None)
            x = net._same(net.g.op("Relu", [net.add(y, short)]), y)
        if i > 0:
            outs.append(x)
    neck = _width(cfg["neck"], scale)
    lateral = [net.conv(o, neck, 1, act=None) for o in outs]
    for i in (1, 0):  # top-down
        lateral[i] = net.add(lateral[i], net.upsample_to(lateral[i + 1], lateral[i]))
    fpn = [net.conv(t, neck, act=None) for t in lateral]
    for i in (1, 2):  # bottom-up path of PAFPN
        fpn[i] = net.add(fpn[i], net.conv(fpn[i - 1], neck, stride=2, act=None))
    return [fpn[0]] + [net.conv(t, neck, act=None) for t in fpn[1:]]


def _build_sized_detector(scale: float, seed: int) -> tuple[onnx.ModelProto, int]:
    """The detector graph and its multiply-adds at a 640x480 input."""
    net = _Net("det", seed, 480, 640)
    image = "input.1"
    net.shape[image] = (3, 480, 640)
    tiny = detector_outputs(net.g, image, suffix="_tiny")
    head = _width(SCRFD_10G["head"], scale)
    outputs: dict[str, list[str]] = {key: [] for key, _ in DETECTOR_OUTPUTS}
    for s, feat in enumerate(_scrfd_features(net, image, scale)):
        x = feat
        for _ in range(SCRFD_10G["stacked"]):
            x = net.conv(x, head)
        for key, width in DETECTOR_OUTPUTS:
            raw = net.conv(x, _ANCHORS * width, act=None)
            nhwc = net.g.op("Transpose", [raw], perm=[0, 2, 3, 1])
            flat = net.g.op("Reshape", [nhwc, net.g.const([-1, width], np.int64)])
            small = net.g.op("Mul", [net.g.op("Tanh", [flat]), net.g.const(_HEAD_GAIN)])
            stride = 8 << s
            outputs[key].append(net.g.op("Add", [tiny[key][s], small], output=f"{key}_{stride}"))
    inputs = [helper.make_tensor_value_info(image, TensorProto.FLOAT, [1, 3, "height", "width"])]
    return net.g.model("sized_scrfd", inputs, detector_value_infos(outputs)), net.macs


def _build_sized_recognizer(scale: float, seed: int) -> tuple[onnx.ModelProto, int]:
    """The iResNet-50 graph (112x112 -> 512) and its multiply-adds for one face."""
    net = _Net("rec", seed, 112, 112)  # node names must not start with Sub/Mul (insightface's mxnet sniffing)
    image = "input.1"
    net.shape[image] = (3, 112, 112)
    x = net.conv(image, _width(IRESNET_50["stem"], scale), act="PRelu")
    for blocks, planes in zip(IRESNET_50["stages"], IRESNET_50["planes"]):
        planes = _width(planes, scale)
        for b in range(blocks):
            stride = 2 if b == 0 else 1
            y = net.conv(net.conv(x, planes, act="PRelu"), planes, stride=stride, act=None, gain=0.5)
            short = x if b > 0 else net.conv(x, planes, 1, stride, act=None)
            x = net.add(y, short)
    c, h, w = net.shape[x]
    flat = net.g.op("Flatten", [x], axis=1)
    fc = net.rng.standard_normal((c * h * w, EMBEDDING_DIM), dtype=np.float32) / math.sqrt(c * h * w)
    net.g.op("MatMul", [flat, net.g.const(fc)], output="embedding")
    net.macs += c * h * w * EMBEDDING_DIM
    inputs = [helper.make_tensor_value_info(image, TensorProto.FLOAT, ["batch", 3, 112, 112])]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", EMBEDDING_DIM])]
    return net.g.model("sized_arcface", inputs, outputs), net.macs


def pack_macs(scale: float = 1.0) -> dict[str, int]:
    """Multiply-adds of the detector at 640x480 (SCRFD-10G: ~10 G) and of the recognizer per face (R50: ~6.3 G)."""
    return {"detector": _build_sized_detector(scale, 0)[1], "recognizer": _build_sized_recognizer(scale, 0)[1]}


def write_sized_face_pack(root: str | Path, name: str = SIZED_PACK_NAME, *, scale: float = 1.0, seed: int = 0) -> Path:
    """Write the real-size random-weight pack to ``<root>/models/<name>/`` and return that folder (~190 MB at
    ``scale=1``). Load it with ``FaceEncoder(pack=name, root=root)``."""
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"scale must be in (0, 1] (1 = the real networks' widths); got {scale}")
    pack_dir = Path(root).expanduser() / "models" / name
    pack_dir.mkdir(parents=True, exist_ok=True)
    det, det_macs = _build_sized_detector(scale, seed)
    onnx.save(det, str(pack_dir / DET_FILE))
    rec, rec_macs = _build_sized_recognizer(scale, seed + 1)
    onnx.save(rec, str(pack_dir / REC_FILE))
    logger.info("wrote %s: detector %.1f GMACs at 640x480, recognizer %.2f GMACs per face", pack_dir, det_macs / 1e9,
                rec_macs / 1e9)
    return pack_dir
