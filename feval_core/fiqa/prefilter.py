"""The landmark pre-filter: landmark features -> a random forest (scikit-learn) -> ONNX, run by onnxruntime.

After seed 001's lightweight FIQA: normalised landmarks into a random-forest regression, run before the expensive
model to drop faces that are not worth scoring. It learns any per-image label on 0..100 (MR-FIQA labels, ViT-FIQA's
``utility``, MOS). A pre-filter folder holds ``prefilter_config.json`` and ``forest.onnx`` only: the forest is never
pickled, and a folder with a pickle-like file in it is refused (:data:`REFUSED_SUFFIXES`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, ConfigError
from ..model.config import PICKLE_SUFFIXES, FaceEncoderConfig, read_json_config, write_json_config
from .landmarks import DetectedFaces, detect_faces, feature_names

logger = logging.getLogger(__name__)

PREFILTER_CONFIG_NAME = "prefilter_config.json"
FOREST_NAME = "forest.onnx"
REFUSED_SUFFIXES = PICKLE_SUFFIXES
PREFILTER_VERSION = 1


@dataclass
class PrefilterConfig:
    """``prefilter_config.json``: the features a forest reads, what it learned, and how well it agreed."""

    points: int = field(default=5, metadata={"help": "5 (detector key points) or 106 (plus a landmark model)"})
    features: list[str] = field(default_factory=list)
    label: str = field(default="mr_label", metadata={"help": "the label it learned (column name)"})
    n_estimators: int = 100
    max_depth: int | None = 12
    min_samples_leaf: int = 3
    seed: int = 0
    train_faces: int = 0
    heldout_srcc: float | None = field(default=None, metadata={"help": "SRCC with the label on held-out faces"})
    face: FaceEncoderConfig = field(default_factory=FaceEncoderConfig)
    version: int = PREFILTER_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.face, dict):
            self.face = read_json_config(FaceEncoderConfig, self.face, what="face")
        if self.points not in (5, 106):
            raise ConfigError(f"points must be 5 or 106, got {self.points!r}")
        if not self.features:
            self.features = list(feature_names(self.points))
        if list(self.features) != list(feature_names(self.points)):
            raise ConfigError(f"features {self.features} are not this feval's {self.points}-point features; retrain "
                              "the pre-filter with `feval fiqa prefilter train`")
        if self.version != PREFILTER_VERSION:
            raise ConfigError(f"pre-filter version {self.version} is not supported; upgrade feval or retrain")
        if self.n_estimators < 1 or self.min_samples_leaf < 1:
            raise ConfigError("n_estimators and min_samples_leaf must be >= 1")

    def save(self, folder: str | Path) -> Path:
        return write_json_config(Path(folder) / PREFILTER_CONFIG_NAME, dataclasses.asdict(self))

    @classmethod
    def load(cls, folder: str | Path) -> PrefilterConfig:
        """Read ``prefilter_config.json`` (a file or the pre-filter folder); unknown keys refused."""
        return read_json_config(cls, folder, what="a pre-filter config", name=PREFILTER_CONFIG_NAME,
                                missing="; write one with `feval fiqa prefilter train`",
                                fix="; retrain the pre-filter with `feval fiqa prefilter train`")


def _refuse_pickles(folder: Path) -> None:
    bad = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in REFUSED_SUFFIXES)
    if bad:
        raise CheckpointError(f"{folder} holds {', '.join(bad)}: feval never loads pickled files, and refuses a "
                              f"pre-filter folder that has any (a forest is {FOREST_NAME}, ONNX). Delete them, or "
                              "retrain with `feval fiqa prefilter train`")


def fit_forest(features: np.ndarray, labels: np.ndarray, cfg: PrefilterConfig, heldout: float = 0.2) -> bytes:
    """Fit the forest (reporting its held-out SRCC in ``cfg``, then refitting on all faces) and return ONNX bytes."""
    try:
        from skl2onnx import to_onnx
        from sklearn.ensemble import RandomForestRegressor
    except ImportError as exc:
        raise ConfigError("training a pre-filter needs scikit-learn and skl2onnx: pip install \"feval[prefilter]\" "
                          "(scoring needs only onnxruntime)") from exc
    from scipy.stats import spearmanr

    x = np.asarray(features, np.float32)
    y = np.asarray(labels, np.float64)
    if len(x) != len(y) or len(x) < 10:
        raise ConfigError(f"a pre-filter needs at least 10 faces with labels, got {len(x)}")

    def forest() -> Any:
        return RandomForestRegressor(n_estimators=cfg.n_estimators, max_depth=cfg.max_depth,
                                     min_samples_leaf=cfg.min_samples_leaf, random_state=cfg.seed, n_jobs=1)

    order = np.random.default_rng(cfg.seed).permutation(len(x))
    cut = int(len(x) * (1 - heldout))
    if 0 < cut < len(x) - 2:
        held = forest().fit(x[order[:cut]], y[order[:cut]])
        cfg.heldout_srcc = float(spearmanr(held.predict(x[order[cut:]]), y[order[cut:]]).statistic)
    model = forest().fit(x, y)
    cfg.train_faces = len(x)
    onx = to_onnx(model, x[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    return onx.SerializeToString()


class LandmarkPrefilter:
    """A trained forest over landmark features, run by onnxruntime.

    >>> pf = LandmarkPrefilter.from_pretrained("models/prefilter")
    >>> pf.predict(features)           # float32 [N], the learned label's scale (0-100)
    >>> pf.score(images).values        # per image; NaN where no face was found
    """

    def __init__(self, config: PrefilterConfig, onnx_bytes: bytes, face_encoder: Any | None = None) -> None:
        import onnxruntime

        self.config = config
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        n_in = self.session.get_inputs()[0].shape[-1]
        if n_in != len(config.features):
            raise CheckpointError(f"{FOREST_NAME} reads {n_in} features but its config names {len(config.features)}; "
                                  "the folder is inconsistent: retrain it")
        self.face_encoder = face_encoder
        self.landmark_model: Any | None = None

    def save_pretrained(self, folder: str | Path, onnx_bytes: bytes) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / FOREST_NAME).write_bytes(onnx_bytes)
        self.config.save(folder)
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, face_root: str | Path | None = None,
                        load_faces: bool = True) -> LandmarkPrefilter:
        """Load ``prefilter_config.json`` + ``forest.onnx`` (and, with ``load_faces``, the face pack that detects)."""
        folder = Path(folder).expanduser()
        if not (folder / PREFILTER_CONFIG_NAME).is_file() or not (folder / FOREST_NAME).is_file():
            raise CheckpointError(f"{folder} is not a pre-filter: it needs {PREFILTER_CONFIG_NAME} and {FOREST_NAME} "
                                  "(write one with `feval fiqa prefilter train`)")
        _refuse_pickles(folder)
        config = PrefilterConfig.load(folder)
        onnx_bytes = (folder / FOREST_NAME).read_bytes()
        pf = cls(config, onnx_bytes)
        if load_faces:
            from ..faces.registry import get_face_encoder

            face = config.face
            root = face_root
            if root is None and face.root:
                root = face.root if Path(face.root).is_absolute() else folder / face.root
            pf.face_encoder = get_face_encoder(face.pack, root=root, det_size=(face.det_size, face.det_size),
                                               det_thresh=face.det_thresh, landmarks=config.points == 106)
            if config.points == 106:
                pf.landmark_model = pf.face_encoder.landmark_model  # the shared encoder's, loaded once
                if pf.landmark_model is None:
                    raise CheckpointError(f"pre-filter {folder} uses 106-point landmarks, but the face pack "
                                          f"{pf.face_encoder.pack_dir} has no 106-point landmark model")
        return pf

    def predict(self, features: np.ndarray) -> np.ndarray:
        """The forest's output for features [N, F] (float32 [N])."""
        x = np.ascontiguousarray(features, np.float32)
        if len(x) == 0:
            return np.zeros(0, np.float32)
        return self.session.run(None, {self.input_name: x})[0].reshape(-1).astype(np.float32)

    def share_faces(self, encoder: Any) -> bool:
        """Get ready to score from ``encoder``'s ``FaceInfo`` s (``FaceEncoder.analyze``) instead of detecting again:
        True when ``encoder`` detects as this pre-filter's face pack does (same pack folder, detector size and
        threshold); a 106-point pre-filter then has it add the pack's 106 landmarks to what it finds."""
        mine = self.face_encoder
        if mine is None or encoder is None or getattr(encoder, "detector_key", None) != mine.detector_key:
            logger.debug("pre-filter: the face pack given (%s) is not this pre-filter's (%s); it detects faces itself",
                         getattr(encoder, "detector_key", None), None if mine is None else mine.detector_key)
            return False
        if self.config.points == 106 and not encoder.enable_landmarks():
            return False
        return True

    def score(self, images: Any, items: list[Any] | None = None, faces: list[Any] | None = None) -> PrefilterResult:
        """The pre-filter score of the main face of each image (paths, folders, PIL, arrays, tensors; or
        pre-expanded ``ImageItem`` s as ``items``).

        ``faces``: one ``FaceInfo`` per image found by a ``FaceEncoder`` (e.g. ``FEvalScorer``'s, kept with
        ``keep_faces=True``): used as they are where they come from this pre-filter's face pack (with 106 landmarks
        for a 106-point pre-filter), so those images are neither read nor detected again; the others (and None
        entries) are detected here.
        """
        from ..inputs.images import expand_inputs

        items = list(items) if items is not None else expand_inputs(images)
        if faces is not None and len(faces) != len(items):
            raise ValueError(f"faces must hold one FaceInfo (or None) per image: {len(faces)} for {len(items)} images")
        given = self._reusable(faces, len(items))
        infos: list[Any] = [None] * len(items)
        errors: list[str | None] = [None] * len(items)
        todo = [i for i in range(len(items)) if given[i] is None]
        if todo:
            found = self._detect([items[i] for i in todo])
            for k, i in enumerate(todo):
                infos[i], errors[i] = found[k]
        for i, info in enumerate(given):
            if info is not None:
                infos[i] = info
        ok = [i for i in range(len(items)) if errors[i] is None]
        detected = DetectedFaces.from_infos([infos[i] for i in ok])
        values = np.full(len(items), np.nan, np.float32)
        values[np.asarray(ok, int)[detected.found]] = self.predict(detected.features(self.config.points))
        counts = [None if errors[i] else int(infos[i].num_faces) for i in range(len(items))]
        return PrefilterResult([it.name for it in items], values, errors, counts)

    def _reusable(self, faces: list[Any] | None, n: int) -> list[Any]:
        """``faces[i]`` where this pre-filter may use it as is, else None."""
        if faces is None:
            return [None] * n
        mine = self.face_encoder
        need = self.config.points == 106
        out = [f if mine is not None and mine.can_reuse(f, landmarks=need) else None for f in faces]
        if any(f is not None and o is None for f, o in zip(faces, out)):
            logger.debug("pre-filter: %d of %d faces were found by another face pack (or without 106 landmarks); "
                         "detecting those again", sum(o is None for o in out), n)
        return out

    def _detect(self, items: list[Any]) -> list[tuple[Any, str | None]]:
        """(FaceInfo-like main face, error) of each item, found with this pre-filter's own face pack."""
        from ..errors import ImageInputError
        from ..inputs.images import load_image

        if self.face_encoder is None:
            raise ConfigError("this pre-filter was loaded without its face pack (load_faces=False)")
        arrays, errors = [], []
        for it in items:
            try:
                arrays.append(np.asarray(load_image(it).convert("RGB")))
                errors.append(None)
            except ImageInputError as exc:
                arrays.append(np.zeros((8, 8, 3), np.uint8))
                errors.append(str(exc))
        found = detect_faces(self.face_encoder, arrays, self.landmark_model)
        return [(found.info(i), errors[i]) for i in range(len(items))]


@dataclass
class PrefilterResult:
    names: list[str]
    values: np.ndarray  # [N] float32, NaN = no face or unreadable
    errors: list[str | None]
    faces: list[int]

    def to_records(self, threshold: float | None = None) -> list[dict[str, Any]]:
        rows = []
        for i, name in enumerate(self.names):
            v = float(self.values[i])
            row: dict[str, Any] = {"image": name, "prefilter": None if math.isnan(v) else round(v, 3),
                                   "faces": self.faces[i] if i < len(self.faces) else None, "error": self.errors[i]}
            if threshold is not None:
                row["passed"] = None if math.isnan(v) else bool(v >= threshold)
            rows.append(row)
        return rows


def train_prefilter(labels: str | Path, out: str | Path, *, label_key: str = "mr_label", points: int = 5,
                    face: FaceEncoderConfig | None = None, n_estimators: int = 100, max_depth: int | None = 12,
                    min_samples_leaf: int = 3, seed: int = 0) -> LandmarkPrefilter:
    """Train a pre-filter on the images of a labels file (JSON Lines ``{"image", <label_key>: number}``, e.g. from
    ``feval fiqa label`` or ``feval score --fiqa``) and write it to ``out``. Images without a face are left out."""
    from ..faces.registry import get_face_encoder
    from ..inputs.images import load_image
    from .mrlabels import read_labels

    face = face or FaceEncoderConfig()
    table = read_labels(labels, label_key)
    encoder = get_face_encoder(face.pack, root=face.root, det_size=(face.det_size, face.det_size),
                               det_thresh=face.det_thresh, landmarks=points == 106)
    landmark_model = encoder.landmark_model if points == 106 else None
    if points == 106 and landmark_model is None:
        raise ConfigError(f"--points 106 needs a 106-point landmark model in {encoder.pack_dir} (buffalo_l has "
                          "2d106det.onnx); use --points 5")
    paths = list(table)
    found = detect_faces(encoder, [np.asarray(load_image(p).convert("RGB")) for p in paths], landmark_model)
    y = np.array([table[p] for p, ok in zip(paths, found.found) if ok])
    cfg = PrefilterConfig(points=points, label=label_key, n_estimators=n_estimators, max_depth=max_depth,
                          min_samples_leaf=min_samples_leaf, seed=seed, face=face)
    onnx_bytes = fit_forest(found.features(points), y, cfg)
    pf = LandmarkPrefilter(cfg, onnx_bytes, encoder)
    pf.landmark_model = landmark_model
    pf.save_pretrained(out, onnx_bytes)
    return pf
