"""A face pack's 106-point landmark model (insightface's ``2d106det.onnx`` in ``buffalo_l``), found by its shapes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def find_landmark_model(pack_dir: str | Path, providers: list[Any] | None = None) -> Any | None:
    """The pack's 106-point landmark model (insightface's ``Landmark``), or None when the pack has none."""
    for onnx_file in sorted(Path(pack_dir).glob("*.onnx")):
        try:
            import onnxruntime

            session = onnxruntime.InferenceSession(str(onnx_file), providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # not loadable: not ours to judge here, FaceEncoder reports broken packs
            logger.debug("%s is not a landmark model (%s)", onnx_file, exc)
            continue
        shape, outs = session.get_inputs()[0].shape, session.get_outputs()
        if len(outs) == 1 and shape[2:] == [192, 192] and outs[0].shape[-1] == 212:
            from insightface.model_zoo.landmark import Landmark

            return Landmark(model_file=str(onnx_file), session=session)
    return None
