"""A face pack's 106-point landmark model (insightface's ``2d106det.onnx`` in ``buffalo_l``), found by its shapes.

Like insightface's ``model_zoo``, the model is recognised by its graph: one ``[N, 3, 192, 192]`` input and one output
of 212 values (106 x, y pairs). The shapes are read from the ONNX file with the ``onnx`` package (no ONNX Runtime
session), only for candidate files: names that hint at landmarks first, then the others by size, leaving out files
over :data:`MAX_LANDMARK_BYTES` (recognizers and the 3D 68-point model, 140+ MB each). One session is opened: the
landmark model's own.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MAX_LANDMARK_BYTES = 64 << 20
"""Files larger than this are not read unless their name hints at landmarks (``2d106det.onnx`` is ~5 MB)."""
_NAME_HINTS = ("106", "landmark", "lmk")


def _candidates(pack_dir: Path) -> list[Path]:
    """The pack's .onnx files that may be a 106-point model: hinted names first, then the rest, smallest first."""
    found = []
    for path in Path(pack_dir).glob("*.onnx"):
        hinted = any(h in path.name.lower() for h in _NAME_HINTS)
        size = path.stat().st_size
        if hinted or size <= MAX_LANDMARK_BYTES:
            found.append((not hinted, size, path.name, path))
    return [item[-1] for item in sorted(found)]


def _graph_shapes(onnx_file: Path) -> tuple[list[Any], list[list[Any]]] | None:
    """(first graph input's dims, each graph output's dims) of an ONNX file, without an ONNX Runtime session.
    Graph inputs that are initializers (old exporters list weights there) are left out."""
    try:
        import onnx
    except ImportError:  # onnx is a core dependency; a stripped install falls back to a session per candidate
        return _session_shapes(onnx_file)
    try:
        model = onnx.load(str(onnx_file), load_external_data=False)
    except Exception as exc:  # not ours to judge here, FaceEncoder reports broken packs
        logger.debug("%s is not a readable ONNX model (%s)", onnx_file, exc)
        return None

    def dims(value: Any) -> list[Any]:
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]

    weights = {init.name for init in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in weights]
    if not inputs:
        return None
    return dims(inputs[0]), [dims(v) for v in model.graph.output]


def _session_shapes(onnx_file: Path) -> tuple[list[Any], list[list[Any]]] | None:
    try:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    except Exception as exc:
        logger.debug("%s is not a loadable ONNX model (%s)", onnx_file, exc)
        return None
    return list(session.get_inputs()[0].shape), [list(o.shape) for o in session.get_outputs()]


def is_landmark_106(shapes: tuple[list[Any], list[list[Any]]] | None) -> bool:
    """Whether (input dims, output dims) are those of insightface's 106-point model."""
    if shapes is None:
        return False
    inp, outs = shapes
    return len(outs) == 1 and list(inp[2:]) == [192, 192] and bool(outs[0]) and outs[0][-1] == 212


def find_landmark_model(pack_dir: str | Path, providers: list[Any] | None = None) -> Any | None:
    """The pack's 106-point landmark model (insightface's ``Landmark``), or None when the pack has none."""
    for onnx_file in _candidates(Path(pack_dir)):
        if not is_landmark_106(_graph_shapes(onnx_file)):
            continue
        try:
            import onnxruntime

            session = onnxruntime.InferenceSession(str(onnx_file), providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:
            logger.debug("%s looks like a landmark model but does not load (%s)", onnx_file, exc)
            continue
        from insightface.model_zoo.landmark import Landmark

        return Landmark(model_file=str(onnx_file), session=session)
    return None
