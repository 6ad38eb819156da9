"""Face detection and ArcFace identity embeddings through an insightface model pack (never downloaded).

``FaceEncoder`` loads a pack's detector and recognizer from ``<root>/models/<pack>/`` (``buffalo_l`` by
default) and turns an RGB image into a ``FaceInfo``: the number of faces and, for the largest one, its box,
five key points, detector score, L2-normalised 512-d embedding and aligned 112x112 crop. "No face" is a
normal result (``num_faces == 0``, everything else ``None``), not an error.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import FaceModelError, ImageInputError
from ..inputs.prefetch import default_workers
from .identity import cosine

__all__ = [
    "DEFAULT_FACE_PACK",
    "DEFAULT_FACE_ROOT",
    "FaceEncoder",
    "FaceInfo",
    "select_providers",
]

logger = logging.getLogger(__name__)

DEFAULT_FACE_PACK = "buffalo_l"
DEFAULT_FACE_ROOT = "~/.insightface"
FACE_ROOT_ENV = "FEVAL_FACE_ROOT"
CROP_SIZE = 112
_OTHER_TORCH_DEVICES = frozenset({"mps", "xpu", "npu", "hpu", "xla", "mtia", "ipu"})  # faces run on the CPU
_PACK_RELEASES = "https://github.com/deepinsight/insightface/releases (tag model-zoo)"


@dataclass
class FaceInfo:
    """What ``FaceEncoder.analyze`` found in one image. The fields describe the main (largest) face."""

    num_faces: int
    bbox: np.ndarray | None = None  # (4,) float32 x1, y1, x2, y2 in input pixels
    kps: np.ndarray | None = None  # (5, 2) float32: eyes, nose, mouth corners
    det_score: float | None = None
    embedding: np.ndarray | None = None  # (512,) float32, unit L2 norm
    crop: np.ndarray | None = None  # (112, 112, 3) uint8 RGB, ArcFace-aligned
    embedding_norm: float | None = None  # the recognizer's L2 norm before normalising (MagFace-style quality cue)
    landmarks: np.ndarray | None = None  # (106, 2) in input pixels, from the pack's 106-point model when asked for
    detector: tuple[str, tuple[int, int], float] | None = None
    """Which detector found this (``FaceEncoder.detector_key``): others reuse the result only if theirs is the same."""

    @property
    def has_face(self) -> bool:
        return self.num_faces > 0

    @classmethod
    def empty(cls) -> FaceInfo:
        """The result for an image without faces."""
        return cls(num_faces=0)


def select_providers(device: str | Any = "cpu") -> tuple[list[Any], int]:
    """ONNX Runtime providers and insightface ``ctx_id`` for ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    CUDA falls back to CPU, with a warning, when this onnxruntime build has no CUDAExecutionProvider;
    other torch accelerators (``"mps"``, ``"xpu"``, ...) also run faces on the CPU.
    """
    import onnxruntime

    text = str(device).strip().lower()
    kind, _, index = text.partition(":")
    if kind == "cpu":
        return ["CPUExecutionProvider"], -1
    if kind in _OTHER_TORCH_DEVICES:
        logger.warning("insightface has no %s execution provider here; running face detection on the CPU", kind)
        return ["CPUExecutionProvider"], -1
    if kind != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N'; got {device!r}")
    device_id = int(index or 0)
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        logger.warning(
            "device %r asked for CUDA, but onnxruntime %s has no CUDAExecutionProvider (install "
            "onnxruntime-gpu for GPU face detection); running insightface on the CPU",
            device,
            onnxruntime.__version__,
        )
        return ["CPUExecutionProvider"], -1
    return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"], device_id


def _resolve_root(root: str | Path | None) -> Path:
    if root is None:
        root = os.environ.get(FACE_ROOT_ENV) or DEFAULT_FACE_ROOT
    return Path(root).expanduser()


def _check_pack(pack: str, pack_dir: Path) -> None:
    """Raise FaceModelError unless ``pack_dir`` holds a pack insightface can load without downloading."""
    if pack_dir.is_dir() and (any(pack_dir.glob("*.onnx")) or (pack_dir / "manifest.json").is_file()):
        return
    nested = pack_dir / pack_dir.name
    if nested.is_dir() and any(nested.glob("*.onnx")):
        raise FaceModelError(
            f"insightface pack {pack!r}: the .onnx files are in {nested}, one folder too deep; "
            f"move them up into {pack_dir}"
        )
    state = "has no .onnx files" if pack_dir.is_dir() else "does not exist"
    raise FaceModelError(
        f"insightface pack {pack!r} not found: {pack_dir} {state}. feval never downloads face models: "
        f"download {pack_dir.name}.zip from {_PACK_RELEASES} and unzip it into {pack_dir}, or point "
        f"root=... (or ${FACE_ROOT_ENV}) at a folder that has models/{pack_dir.name}/ in it"
    )


def _to_rgb_uint8(image: Image.Image | np.ndarray) -> np.ndarray:
    """An HxWx3 uint8 RGB array from a PIL image or an HxW / HxWx1 / HxWx3 / HxWx4 array (uint8 or [0, 1] floats)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise ImageInputError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    array = image
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageInputError(f"expected an HxW, HxWx3 or HxWx4 image array, got shape {image.shape}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
            raise ImageInputError(f"expected uint8 or finite float pixels in [0, 1], got dtype {array.dtype}")
        array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return array[..., :3]


def _thinner_than_a_pixel(height: int, width: int, det_size: tuple[int, int]) -> bool:
    """Whether the detector's fit-into-``det_size`` resize would make a side 0 px (as insightface computes it)."""
    im_ratio, model_ratio = height / width, det_size[1] / det_size[0]
    short = int(det_size[1] / im_ratio) if im_ratio > model_ratio else int(det_size[0] * im_ratio)
    return short < 1


class FaceEncoder:
    """insightface detector + ArcFace recognizer, loaded from a local pack only.

    ``pack`` is a folder name under ``<root>/models/`` (or an absolute folder path); ``root`` defaults to
    ``$FEVAL_FACE_ROOT``, else ``~/.insightface``. ``device`` is ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    ``analyze`` may be called from several threads, and up to ``sessions`` of them detect at the same time:
    each holds its own copy of the pack's ONNX Runtime sessions while it works (copies are loaded when a
    thread first finds none free; insightface's detector caches anchors, so a copy is never shared by two
    threads at once). ``sessions`` defaults to the prefetch workers' default (up to 4, at most the CPU
    cores); ``threads`` is each copy's intra-op thread count, by default the CPU cores divided among the
    copies (on the CPU; ONNX Runtime's own default with CUDA). Each copy holds the pack's weights once more
    in memory (~180 MB for ``buffalo_l``). ``FEvalScorer`` raises ``sessions`` to its worker count
    (:meth:`allow_sessions`).
    """

    def __init__(
        self,
        pack: str = DEFAULT_FACE_PACK,
        root: str | Path | None = None,
        device: str = "cpu",
        det_size: tuple[int, int] = (640, 640),
        det_thresh: float = 0.5,
        *,
        sessions: int | None = None,
        threads: int | None = None,
    ) -> None:
        if len(det_size) != 2 or any(int(v) != v or v <= 0 or v % 32 for v in det_size):
            raise ValueError(f"det_size must be (width, height), positive multiples of 32; got {det_size}")
        if not 0.0 < det_thresh < 1.0:
            raise ValueError(f"det_thresh must be in (0, 1); got {det_thresh}")
        self.pack = pack
        self.root = _resolve_root(root)
        given = Path(pack).expanduser()
        self.pack_dir = given if given.is_absolute() else self.root / "models" / pack
        self.det_size = (int(det_size[0]), int(det_size[1]))
        self.det_thresh = float(det_thresh)
        if sessions is not None and (int(sessions) != sessions or sessions < 1):
            raise ValueError(f"sessions must be a positive integer (threads that may detect at once); got {sessions}")
        if threads is not None and (int(threads) != threads or threads < 1):
            raise ValueError(f"threads must be a positive integer (ONNX Runtime threads per session); got {threads}")
        _check_pack(pack, self.pack_dir)
        # insightface 2.1 calls a scikit-image API that warns about its own deprecation on every face. A filter
        # set once (``catch_warnings`` is not thread-safe, and threads detect at the same time now)
        warnings.filterwarnings("ignore", message=".*`estimate` is deprecated", category=FutureWarning)
        self.providers, self._ctx_id = select_providers(device)
        self.sessions = int(sessions) if sessions is not None else default_workers()
        on_cpu = self._ctx_id < 0
        self._fixed_threads = threads is not None
        self.threads = int(threads) if threads else (max(1, (os.cpu_count() or 1) // self.sessions) if on_cpu else 0)
        self._free = [self._load(self._ctx_id)]  # loaded now: a broken pack fails here, not in a worker thread
        self._created = 1
        self._pool = threading.Condition()
        self._key = (str(self.pack_dir.resolve()), self.det_size, self.det_thresh)
        self.detections = 0  # images the detector ran on (analyze and detect), for tests and benchmarks
        self._landmarks: Any | None = None  # the pack's 106-point model, once enable_landmarks() found one
        self._landmarks_lock = threading.Lock()
        logger.info("loaded insightface pack %s with %s (up to %d sessions, %s threads each)", self.pack_dir,
                    self.providers, self.sessions, self.threads or "default")

    @property
    def detector_key(self) -> tuple[str, tuple[int, int], float]:
        """What decides the detections: the pack folder, the detector input size and threshold."""
        return self._key

    def can_reuse(self, info: FaceInfo | None, *, landmarks: bool = False) -> bool:
        """Whether ``info`` (from any encoder) is what :meth:`analyze` would return here: the same detector
        (:attr:`detector_key`) and, with ``landmarks``, 106 landmarks on a found face."""
        if info is None or info.detector != self.detector_key:
            return False
        return not (landmarks and info.has_face and info.landmarks is None)

    def enable_landmarks(self) -> bool:
        """Have :meth:`analyze` add the main face's 106 landmarks from the pack's landmark model (``2d106det.onnx``
        in ``buffalo_l``). Returns False, changing nothing, when the pack has none."""
        with self._landmarks_lock:  # the registry shares encoders: two users may ask at once
            if self._landmarks is None:
                from .landmark_model import find_landmark_model

                self._landmarks = find_landmark_model(self.pack_dir, self.providers)
        return self._landmarks is not None

    @property
    def landmark_model(self) -> Any | None:
        """The pack's 106-point model (insightface ``Landmark``) once :meth:`enable_landmarks` found one, else None."""
        return self._landmarks

    def _counted(self) -> None:
        with self._pool:
            self.detections += 1

    def _session_options(self) -> Any:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads  # 0: ONNX Runtime's default (all cores)
        options.inter_op_num_threads = 1
        return options

    def _acquire(self) -> Any:
        """A loaded copy of the pack for this thread alone (loads one more when none is free and fewer than
        ``sessions`` exist; otherwise waits for one)."""
        with self._pool:
            while not self._free and self._created >= self.sessions:
                self._pool.wait()
            if self._free:
                return self._free.pop()
            self._created += 1
        try:
            return self._load(self._ctx_id)
        except BaseException:
            with self._pool:
                self._created -= 1
                self._pool.notify()
            raise

    def _release(self, app: Any) -> None:
        with self._pool:
            self._free.append(app)
            self._pool.notify()

    def allow_sessions(self, count: int) -> None:
        """Let up to ``count`` threads detect at the same time (never lowers the limit; copies already loaded keep
        their threads, new ones get the cores divided by the new limit on the CPU)."""
        with self._pool:
            if count > self.sessions:
                self.sessions = int(count)
                if self._ctx_id < 0 and not self._fixed_threads:
                    self.threads = max(1, (os.cpu_count() or 1) // self.sessions)
                self._pool.notify_all()

    @property
    def loaded_sessions(self) -> int:
        """How many copies of the pack's sessions exist now (at most :attr:`sessions`)."""
        return self._created

    def _load(self, ctx_id: int) -> Any:
        from insightface.app import FaceAnalysis

        try:
            # An existing folder given as ``name`` is used as is: insightface never reaches its downloader.
            app = FaceAnalysis(
                name=str(self.pack_dir.resolve()),
                root=str(self.root),
                allowed_modules=["detection", "recognition"],
                providers=self.providers,
                sess_options=self._session_options(),
            )
            app.prepare(ctx_id=ctx_id, det_thresh=self.det_thresh, det_size=self.det_size)
        except Exception as err:  # insightface raises AssertionError, onnxruntime its own errors
            raise FaceModelError(
                f"could not load insightface pack {self.pack_dir}: {type(err).__name__}: {err}. "
                f"Check that the folder holds a complete pack (e.g. {DEFAULT_FACE_PACK} from {_PACK_RELEASES})"
            ) from err
        missing = {"detection", "recognition"} - set(app.models)
        if missing:
            raise FaceModelError(
                f"insightface pack {self.pack_dir} has no {' or '.join(sorted(missing))} model "
                f"(found: {sorted(app.models) or 'none'}); feval needs a detector and an ArcFace recognizer"
            )
        return app

    def __repr__(self) -> str:
        return f"FaceEncoder(pack_dir={str(self.pack_dir)!r}, providers={self.providers!r}, det_size={self.det_size})"

    @property
    def embedding_dim(self) -> int:
        """Length of the identity embedding (512 for ArcFace packs)."""
        app = self._acquire()
        try:
            dim = app.models["recognition"].output_shape[-1]
        finally:
            self._release(app)
        return int(dim) if isinstance(dim, int) else 512

    def analyze(self, image: Image.Image | np.ndarray) -> FaceInfo:
        """Detect faces in an RGB image and describe the largest one."""
        from insightface.utils import face_align

        rgb = _to_rgb_uint8(image)
        none = FaceInfo(num_faces=0, detector=self.detector_key)
        if _thinner_than_a_pixel(rgb.shape[0], rgb.shape[1], self.det_size):
            return none  # e.g. 4000x1: no face fits, and the detector's resize would fail
        bgr = np.ascontiguousarray(rgb[..., ::-1])  # insightface works in OpenCV's BGR order
        self._counted()
        app = self._acquire()
        try:
            faces = app.get(bgr)
        finally:
            self._release(app)
        if not faces:
            return none
        main = max(faces, key=lambda f: float((f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])))
        kps = np.asarray(main.kps, dtype=np.float32)
        crop = face_align.norm_crop(bgr, landmark=kps, image_size=CROP_SIZE)[..., ::-1]
        embedding = np.asarray(main.embedding, dtype=np.float32).ravel()
        norm = float(np.linalg.norm(embedding))
        embedding = embedding / max(norm, 1e-12)
        marks = None if self._landmarks is None else np.array(self._landmarks.get(bgr, main)[:, :2])
        return FaceInfo(
            num_faces=len(faces),
            bbox=np.asarray(main.bbox, dtype=np.float32),
            kps=kps,
            det_score=float(main.det_score),
            embedding=embedding,
            crop=np.ascontiguousarray(crop),
            embedding_norm=norm,
            landmarks=marks,
            detector=self.detector_key,
        )

    def detect(self, image: Image.Image | np.ndarray) -> list[Any]:
        """Detection only (no recognizer): insightface ``Face`` objects with ``bbox``, ``kps`` and ``det_score``."""
        from insightface.app.common import Face

        rgb = _to_rgb_uint8(image)
        if _thinner_than_a_pixel(rgb.shape[0], rgb.shape[1], self.det_size):
            return []
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        self._counted()
        app = self._acquire()
        try:
            boxes, kpss = app.det_model.detect(bgr, max_num=0, metric="default")
        finally:
            self._release(app)
        return [Face(bbox=boxes[i, :4], kps=None if kpss is None else kpss[i], det_score=float(boxes[i, 4]))
                for i in range(boxes.shape[0])]

    def analyze_many(self, images: Iterable[Image.Image | np.ndarray]) -> list[FaceInfo]:
        """``analyze`` for each image, in order."""
        return [self.analyze(image) for image in images]

    def embed(self, image: Image.Image | np.ndarray) -> np.ndarray | None:
        """The main face's unit-norm embedding, or None when no face is found."""
        return self.analyze(image).embedding

    cosine = staticmethod(cosine)
