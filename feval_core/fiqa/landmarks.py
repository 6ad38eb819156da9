"""Landmark features of a detected face for the landmark pre-filter (seed 001's lightweight FIQA).

The detector's five key points (eyes, nose tip, mouth corners; every insightface pack) are similarity-aligned to
the ArcFace template and scaled by the inter-ocular distance (IOD); from them come pose (roll, yaw and pitch
proxies), symmetry, the fit to the template and size features. Where the pack has a 106-point landmark model
(``2d106det.onnx`` in ``buffalo_l``) eye and mouth openness and the symmetry of the face contour are added.
Everything is vectorised numpy over ``N`` faces: no model runs here after detection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FaceModelError

TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                     [70.7299, 92.2041]], np.float64)
"""insightface's ArcFace template (112 x 112 crop): left eye, right eye, nose tip, left and right mouth corner."""
TEMPLATE_IOD = float(np.linalg.norm(TEMPLATE[1] - TEMPLATE[0]))

FEATURES_5 = (
    "roll_deg", "scale_log_iod", "det_score", "box_log_w", "box_log_h", "box_aspect", "fit_rms",
    *(f"res_{p}_{a}" for p in ("le", "re", "nose", "lm", "rm") for a in "xy"),
    "yaw_nose", "yaw_mouth", "pitch_nose", "eye_mouth", "mouth_width", "sym_eyes_nose", "sym_mouth_nose",
)
"""Features from the detector: names in the order :func:`landmark_features` returns them."""
FEATURES_106 = ("eye_open_l", "eye_open_r", "mouth_open", "contour_sym")
"""Extra features from a 106-point landmark model."""
# Point groups of insightface's 2d106 mark-up (alignment/coordinate_reg): contour, one eye, mouth, other eye.
CONTOUR, EYE_A, MOUTH, EYE_B = slice(0, 33), slice(33, 43), slice(52, 72), slice(87, 97)


def feature_names(points: int) -> tuple[str, ...]:
    """The feature names for ``points`` = 5 (detector only) or 106 (plus a landmark model)."""
    if points not in (5, 106):
        raise ValueError(f"landmark points must be 5 or 106, got {points}")
    return FEATURES_5 + (FEATURES_106 if points == 106 else ())


def _similarity(src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity of ``src`` [N, 5, 2] onto the template: (a = s*e^{i theta} [N], aligned [N, 5, 2])."""
    z = src[..., 0] + 1j * src[..., 1]
    w = TEMPLATE[:, 0] + 1j * TEMPLATE[:, 1]
    zc = z - z.mean(axis=1, keepdims=True)
    wc = w - w.mean()
    a = (np.conj(zc) * wc).sum(axis=1) / np.maximum((np.abs(zc) ** 2).sum(axis=1), 1e-12)
    aligned = a[:, None] * zc + w.mean()
    return a, np.stack([aligned.real, aligned.imag], axis=-1)


def _eye_frame(points: np.ndarray, le: np.ndarray, re: np.ndarray) -> np.ndarray:
    """``points`` [N, K, 2] in a frame with the eye midpoint at 0, the eyes on the x axis and IOD = 1."""
    d = re - le
    iod = np.maximum(np.linalg.norm(d, axis=1), 1e-6)
    c, s = d[:, 0] / iod, d[:, 1] / iod
    p = points - ((le + re) / 2)[:, None, :]
    x = (p[..., 0] * c[:, None] + p[..., 1] * s[:, None]) / iod[:, None]
    y = (-p[..., 0] * s[:, None] + p[..., 1] * c[:, None]) / iod[:, None]
    return np.stack([x, y], axis=-1)


def _spread_ratio(group: np.ndarray) -> np.ndarray:
    """Minor over major extent of each point group [N, K, 2] (principal axes): how 'open' an eye or mouth is."""
    c = group - group.mean(axis=1, keepdims=True)
    cov = np.einsum("nki,nkj->nij", c, c) / group.shape[1]
    ev = np.linalg.eigvalsh(cov)  # ascending
    return np.sqrt(np.maximum(ev[:, 0], 0) / np.maximum(ev[:, 1], 1e-12))


def landmark_features(kps: np.ndarray, bbox: np.ndarray, det_score: np.ndarray,
                      lmk106: np.ndarray | None = None) -> np.ndarray:
    """Features [N, F] float32 of ``N`` faces: key points [N, 5, 2], boxes [N, 4] (x1, y1, x2, y2), detector
    scores [N] and optionally 106-point landmarks [N, 106, 2] (all in image pixels)."""
    kps = np.asarray(kps, np.float64).reshape(-1, 5, 2)
    bbox = np.asarray(bbox, np.float64).reshape(-1, 4)
    det = np.asarray(det_score, np.float64).reshape(-1)
    if not len(kps) == len(bbox) == len(det):
        raise ValueError(f"need one box and score per face: {len(kps)} key point sets, {len(bbox)} boxes, "
                         f"{len(det)} scores")
    a, aligned = _similarity(kps)
    le, re = kps[:, 0], kps[:, 1]
    iod = np.maximum(np.linalg.norm(re - le, axis=1), 1e-6)
    residual = (aligned - TEMPLATE) / TEMPLATE_IOD
    frame = _eye_frame(kps, le, re)
    nose, lm, rm = frame[:, 2], frame[:, 3], frame[:, 4]
    mouth = (lm + rm) / 2
    w = np.maximum(bbox[:, 2] - bbox[:, 0], 1e-3)
    h = np.maximum(bbox[:, 3] - bbox[:, 1], 1e-3)
    d_le, d_re = np.linalg.norm(frame[:, 0] - nose, axis=1), np.linalg.norm(frame[:, 1] - nose, axis=1)
    d_lm, d_rm = np.linalg.norm(lm - nose, axis=1), np.linalg.norm(rm - nose, axis=1)
    cols = [np.degrees(np.abs(np.angle(a))), np.log(iod), det, np.log(w), np.log(h), w / h,
            np.sqrt((residual ** 2).sum(axis=(1, 2)) / 5), *residual.reshape(len(kps), 10).T,
            nose[:, 0], mouth[:, 0], nose[:, 1] / np.maximum(mouth[:, 1], 1e-3), mouth[:, 1],
            np.linalg.norm(rm - lm, axis=1), np.abs(d_le - d_re), np.abs(d_lm - d_rm)]
    if lmk106 is not None:
        lmk = np.asarray(lmk106, np.float64).reshape(-1, 106, 2)
        if len(lmk) != len(kps):
            raise ValueError(f"need one set of 106 landmarks per face, got {len(lmk)} for {len(kps)} faces")
        f = _eye_frame(lmk, le, re)
        contour = f[:, CONTOUR]
        cols += [_spread_ratio(f[:, EYE_A]), _spread_ratio(f[:, EYE_B]), _spread_ratio(f[:, MOUTH]),
                 np.abs(contour[..., 0] + contour[:, ::-1, 0]).mean(axis=1)]  # mirror pairs about the face's axis
    return np.nan_to_num(np.stack(cols, axis=1), nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


@dataclass
class DetectedFaces:
    """What the detector (and a landmark model) found on the main face of each image; ``found[i]`` False = none."""

    found: np.ndarray  # [N] bool
    kps: np.ndarray  # [N, 5, 2]
    bbox: np.ndarray  # [N, 4]
    det_score: np.ndarray  # [N]
    lmk106: np.ndarray | None = None  # [N, 106, 2]
    num_faces: list[int] | None = None

    @classmethod
    def from_infos(cls, infos: list[Any]) -> DetectedFaces:
        """The same arrays from ``FaceEncoder.analyze`` results (``FaceInfo``: the main face's box, key points,
        detector score and, where the encoder ran one, 106 landmarks), without detecting again."""
        n = len(infos)
        found = np.array([info.has_face for info in infos], bool)
        kps, bbox, det = np.zeros((n, 5, 2)), np.zeros((n, 4)), np.zeros(n)
        with_lmk = all(info.landmarks is not None for info in infos if info.has_face)
        lmk = np.zeros((n, 106, 2)) if with_lmk else None
        for i in np.flatnonzero(found):
            info = infos[i]
            kps[i], bbox[i], det[i] = info.kps, info.bbox, info.det_score
            if lmk is not None:
                lmk[i] = info.landmarks
        return cls(found, kps, bbox, det, lmk, [int(info.num_faces) for info in infos])

    def info(self, i: int) -> Any:
        """Image ``i``'s main face as a ``FaceInfo`` (what :meth:`from_infos` reads back; no embedding or crop)."""
        from ..faces.encoder import FaceInfo

        count = self.num_faces[i] if self.num_faces is not None else int(self.found[i])
        if not self.found[i]:
            return FaceInfo(num_faces=count)
        return FaceInfo(num_faces=count, bbox=self.bbox[i], kps=self.kps[i], det_score=float(self.det_score[i]),
                        landmarks=None if self.lmk106 is None else self.lmk106[i])

    def features(self, points: int = 5) -> np.ndarray:
        """:func:`landmark_features` of the images with a face (rows in the order of ``np.flatnonzero(found)``)."""
        keep = self.found
        extra = None
        if points == 106:
            if self.lmk106 is None:
                raise FaceModelError("this pre-filter uses 106-point landmarks but the face pack has no 106-point "
                                     "landmark model (buffalo_l's 2d106det.onnx); use a pack that has one")
            extra = self.lmk106[keep]
        return landmark_features(self.kps[keep], self.bbox[keep], self.det_score[keep], extra)


def detect_faces(encoder: Any, images: list[np.ndarray], landmark_model: Any | None = None) -> DetectedFaces:
    """Detect the main (largest) face of each RGB uint8 image with ``encoder`` (a FaceEncoder) — detection only,
    no recognizer — and run the 106-point model on it when given."""
    n = len(images)
    found = np.zeros(n, bool)
    kps, bbox, det = np.zeros((n, 5, 2)), np.zeros((n, 4)), np.zeros(n)
    lmk = np.zeros((n, 106, 2)) if landmark_model is not None else None
    counts = []
    for i, image in enumerate(images):
        faces = encoder.detect(image)
        counts.append(len(faces))
        if not faces:
            continue
        main = max(faces, key=lambda f: float((f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])))
        found[i], kps[i], bbox[i], det[i] = True, main.kps, main.bbox, main.det_score
        if landmark_model is not None:
            lmk[i] = landmark_model.get(np.ascontiguousarray(image[..., ::-1]), main)[:, :2]
    return DetectedFaces(found, kps, bbox, det, lmk, counts)
