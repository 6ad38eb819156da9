"""One loaded face pack per process: ``get_face_encoder`` hands out a shared :class:`FaceEncoder`.

F-Eval, ViT-FIQA, the landmark pre-filter, the video scorer and the ComfyUI nodes ask here for their encoder, so
a process that uses several of them on the same pack folder with the same settings (ONNX Runtime providers,
detector size and threshold) holds the pack's ONNX sessions once, not once per user. The registry keeps only weak
references: a pack is freed as soon as its last user goes.

106 landmarks: an encoder asked for with ``landmarks=True`` is the same shared one, upgraded in place
(:meth:`FaceEncoder.enable_landmarks`, which adds the pack's small landmark model), rather than a second copy of
the whole pack. The detections do not change (the detector key stays the same, so ``FaceInfo`` s keep being
reused); every user of that encoder then also gets the main face's 106 landmarks (one small model run per image).
"""

from __future__ import annotations

import logging
import threading
import weakref
from pathlib import Path
from typing import Any

from .encoder import DEFAULT_FACE_PACK, FaceEncoder, _resolve_root, select_providers

__all__ = ["encoder_key", "get_face_encoder", "shared_encoders"]

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_encoders: weakref.WeakValueDictionary[tuple, FaceEncoder] = weakref.WeakValueDictionary()
_gates: dict[tuple, threading.Lock] = {}  # one per key: a pack loads once, other packs load meanwhile


def _hashable(value: Any) -> Any:
    """Providers (names, or (name, options dict) pairs) as nested tuples."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), _hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value


def encoder_key(pack: str = DEFAULT_FACE_PACK, root: str | Path | None = None, device: str = "cpu",
                det_size: tuple[int, int] = (640, 640), det_thresh: float = 0.5) -> tuple:
    """What makes two encoders the same: the pack folder (resolved), the ONNX Runtime providers ``device`` gives,
    the detector input size and threshold."""
    given = Path(pack).expanduser()
    pack_dir = given if given.is_absolute() else _resolve_root(root) / "models" / pack
    providers, _ = select_providers(device)
    return str(pack_dir.resolve()), _hashable(providers), tuple(det_size), float(det_thresh)


def get_face_encoder(pack: str = DEFAULT_FACE_PACK, root: str | Path | None = None, device: str = "cpu",
                     det_size: tuple[int, int] = (640, 640), det_thresh: float = 0.5, *,
                     landmarks: bool = False, sessions: int | None = None) -> FaceEncoder:
    """The process's :class:`FaceEncoder` for this pack and these settings, loaded on first use (same arguments and
    errors as ``FaceEncoder``). ``landmarks``: have it add the pack's 106 landmarks (check
    ``encoder.landmark_model``: None when the pack has none). ``sessions``: let at least that many threads detect at
    once (:meth:`FaceEncoder.allow_sessions`; never lowered for the other users). Thread-safe."""
    key = encoder_key(pack, root, device, det_size, det_thresh)
    with _lock:
        gate = _gates.setdefault(key, threading.Lock())
    with gate:
        encoder = _encoders.get(key)
        if encoder is None:
            encoder = FaceEncoder(pack, root=root, device=device, det_size=det_size, det_thresh=det_thresh,
                                  sessions=sessions)
            _encoders[key] = encoder
        else:
            logger.debug("reusing the loaded face pack %s (%s, det_size %s)", encoder.pack_dir, key[1], key[2])
            if sessions is not None:
                encoder.allow_sessions(sessions)
        if landmarks:
            encoder.enable_landmarks()
    return encoder


def shared_encoders() -> list[FaceEncoder]:
    """The encoders loaded now (for tests and benchmarks)."""
    with _lock:
        return list(_encoders.values())
