"""``FIQAScorer``: the ``utility`` score (0-100) of the main face of each image, from a ViT-FIQA model.

``utility`` says how useful a face is to a face recognizer: the percentile of the model's training faces whose
predicted quality is lower (50 = as useful as the median training face; 5 = worse than 95% of them). It is not
how the face looks to people (that is F-Eval's ``quality``). An image without a face gets NaN with a reason; an
image that cannot be read gets an error row; the rest of the batch is still scored.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..dimensions import DIMENSIONS, IMAGE_ERROR, NOT_ASKED
from ..errors import FaceModelError
from ..scoring.result import ScoreResult
from .config import FIQAConfig
from .labels import utility_from_raw
from .vit import ViTFIQA, crops_to_tensor

logger = logging.getLogger(__name__)

NO_FACE = "no face detected; utility not scored"


@dataclass
class FIQAResult:
    """``utility[i]`` of image ``i`` on 0-100 (NaN: no face, or an error); ``raw`` is the quality head's output."""

    utility: torch.Tensor
    raw: torch.Tensor
    names: list[str]
    faces: list[int | None]
    errors: list[str | None]
    warnings: list[list[str]] = field(default_factory=list)
    prefilter: list[float | None] = field(default_factory=list)  # with a pre-filter: its score per image

    def __len__(self) -> int:
        return len(self.names)

    def as_score_result(self) -> ScoreResult:
        """These images as an F-Eval :class:`ScoreResult` with no dimension asked for (for totals that weigh
        utility alone under the one rule of :func:`~feval_core.scoring.result.judged_mean`)."""
        n = len(self)
        missing = [dict.fromkeys(DIMENSIONS, IMAGE_ERROR if self.errors[i] else NOT_ASKED) for i in range(n)]
        return ScoreResult(torch.full((n, len(DIMENSIONS)), math.nan), list(self.names), list(self.faces),
                           list(self.errors), [list(w) for w in self.warnings] if self.warnings else [[]] * n,
                           missing=missing)

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per image: ``{"image", "utility", "faces", "error"[, "warnings"]}``."""
        rows = []
        for i, name in enumerate(self.names):
            v = float(self.utility[i])
            row: dict[str, Any] = {"image": name, "utility": None if math.isnan(v) else round(v, 4),
                                   "faces": self.faces[i], "error": self.errors[i]}
            if self.prefilter:
                row["prefilter"] = self.prefilter[i]
            if self.warnings and self.warnings[i]:
                row["warnings"] = list(self.warnings[i])
            rows.append(row)
        return rows

    @staticmethod
    def concat(parts: Sequence[FIQAResult]) -> FIQAResult:
        if not parts:
            return FIQAResult(torch.empty(0), torch.empty(0), [], [], [], [])
        return FIQAResult(torch.cat([p.utility for p in parts]), torch.cat([p.raw for p in parts]),
                          [n for p in parts for n in p.names], [f for p in parts for f in p.faces],
                          [e for p in parts for e in p.errors], [w for p in parts for w in p.warnings],
                          [v for p in parts for v in p.prefilter])


class FIQAScorer:
    """A ViT-FIQA model and the face pack that finds and aligns faces for it.

    >>> scorer = FIQAScorer.from_pretrained("runs/vit-fiqa")
    >>> scorer.score(["a.jpg", "b.png"]).utility       # float32 [2] on 0-100, NaN where no face
    """

    def __init__(self, model: ViTFIQA, face_encoder: Any, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.face_encoder = face_encoder
        self.device = device

    @property
    def config(self) -> FIQAConfig:
        return self.model.config

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None,
                        face_root: str | Path | None = None) -> FIQAScorer:
        """Load a ViT-FIQA folder (``fiqa_config.json`` + ``model.safetensors``) and its face pack (never downloaded).

        ``face_root`` overrides the folder that holds ``models/<pack>`` (default: the config's ``face.root``,
        relative to the model folder, else ``$FEVAL_FACE_ROOT`` or ``~/.insightface``).
        """
        from ..faces.registry import get_face_encoder

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        folder = Path(path).expanduser()
        model = ViTFIQA.from_pretrained(folder, device=device)
        face = model.config.face
        root: str | Path | None = face_root
        if root is None and face.root:
            root = face.root if Path(face.root).is_absolute() else folder / face.root
        try:
            encoder = get_face_encoder(face.pack, root=root, device=device, det_size=(face.det_size, face.det_size),
                                       det_thresh=face.det_thresh)
        except FaceModelError as exc:
            raise FaceModelError(f"ViT-FIQA {folder} scores aligned faces and needs its face pack: {exc}") from exc
        if model.config.utility_quantiles is None:
            logger.warning("%s has no utility calibration (its quality head was never trained, e.g. an imported "
                           "recognizer): utility is 100 * sigmoid(raw) and means little; train it with "
                           "`feval fiqa train --init %s`", folder, folder)
        return cls(model, encoder, device)

    @torch.no_grad()
    def raw_quality(self, crops: np.ndarray, batch_size: int = 64) -> torch.Tensor:
        """The quality head's output for ``[N, 112, 112, 3]`` uint8 aligned crops (float32 ``[N]``, on the CPU)."""
        out = []
        for start in range(0, len(crops), batch_size):
            _, q = self.model(crops_to_tensor(crops[start:start + batch_size], self.device))
            out.append(q.float().cpu())
        return torch.cat(out) if out else torch.empty(0)

    def utility_of_crops(self, crops: np.ndarray, batch_size: int = 64) -> torch.Tensor:
        """Utility (0-100, float32 ``[N]``) of aligned crops."""
        raw = self.raw_quality(crops, batch_size)
        return torch.from_numpy(utility_from_raw(raw, self.config.utility_quantiles)).float()

    def score(self, images: Any, batch_size: int = 32, *, faces: Sequence[Any] | None = None, prefilter: Any = None,
              prefilter_threshold: float | None = None) -> FIQAResult:
        """Utility of the main face of each image (paths, folders, PIL, numpy, torch; as ``FEvalScorer.score``).

        ``faces``: one ``FaceInfo`` per image from a ``FaceEncoder`` (e.g. ``FEvalScorer.score(..., keep_faces=True)
        .face_info``): where it comes from this model's face pack (same pack folder, detector size and threshold)
        its aligned crop is used and the image is neither read nor detected again; other images are detected here.
        ``prefilter`` / ``prefilter_threshold``: as in ``FEvalScorer.score`` (the rule of
        :mod:`feval_core.scoring.prefilter`), skipping ViT-FIQA for faces under the threshold.
        """
        return FIQAResult.concat(list(self.iter_scores(images, batch_size=batch_size, faces=faces,
                                                       prefilter=prefilter, prefilter_threshold=prefilter_threshold)))

    def iter_scores(self, images: Any, batch_size: int = 32, items: Sequence[Any] | None = None, *,
                    faces: Sequence[Any] | None = None, prefilter: Any = None,
                    prefilter_threshold: float | None = None) -> Iterator[FIQAResult]:
        """:meth:`score` one chunk of ``batch_size`` images at a time (``items``: pre-expanded ``ImageItem`` s)."""
        from ..inputs.images import expand_inputs
        from ..scoring.prefilter import check_threshold

        check_threshold(prefilter, prefilter_threshold)
        todo = list(items) if items is not None else expand_inputs(images)
        if faces is not None and len(faces) != len(todo):
            raise ValueError(f"faces must hold one FaceInfo (or None) per image: {len(faces)} for {len(todo)} images")
        if prefilter is not None:
            prefilter.share_faces(self.face_encoder)
        for start in range(0, len(todo), batch_size):
            given = list(faces[start:start + batch_size]) if faces is not None else None
            yield self._score_chunk(todo[start:start + batch_size], batch_size, given, prefilter, prefilter_threshold)

    def _faces(self, chunk: Sequence[Any], given: list[Any] | None) -> tuple[list[Any], list[str | None]]:
        """The main face of each image: ``given[i]`` where this model's face pack found it, else detected here."""
        from ..errors import ImageInputError
        from ..inputs.images import load_image

        infos: list[Any] = [None] * len(chunk)
        errors: list[str | None] = [None] * len(chunk)
        reused = 0
        for i, item in enumerate(chunk):
            if given is not None and self.face_encoder.can_reuse(given[i]):
                infos[i] = given[i]
                reused += 1
                continue
            try:
                infos[i] = self.face_encoder.analyze(load_image(item))
            except ImageInputError as exc:
                errors[i] = str(exc)
        if given is not None and reused < len(chunk):
            logger.debug("ViT-FIQA: %d of %d images had no face information from this model's face pack (%s); "
                         "detected them again", len(chunk) - reused, len(chunk), self.face_encoder.detector_key)
        return infos, errors

    def _score_chunk(self, chunk: Sequence[Any], batch_size: int, given: list[Any] | None = None,
                     prefilter: Any = None, threshold: float | None = None) -> FIQAResult:
        from ..scoring.prefilter import run_prefilter

        n = len(chunk)
        infos, errors = self._faces(chunk, given)
        faces: list[int | None] = [None if info is None else info.num_faces for info in infos]
        warns: list[list[str]] = [[] for _ in range(n)]
        pre = None
        if prefilter is not None:
            pre = run_prefilter(prefilter, chunk, infos, threshold)
        crops, where = [], []
        for i, info in enumerate(infos):
            if info is None:
                continue
            if not info.has_face:
                warns[i].append(NO_FACE)
            elif pre is not None and pre.skipped[i]:
                warns[i].append(pre.note(i, "ViT-FIQA"))
            else:
                crops.append(info.crop)
                where.append(i)
        raw = torch.full((n,), math.nan)
        utility = torch.full((n,), math.nan)
        if crops:
            r = self.raw_quality(np.stack(crops), batch_size)
            raw[where] = r
            utility[where] = torch.from_numpy(utility_from_raw(r, self.config.utility_quantiles)).float()
        prefilter_values = [pre.record_value(i) for i in range(n)] if pre is not None else []
        return FIQAResult(utility, raw, [it.name for it in chunk], faces, errors, warns, prefilter_values)


def merge_utility(records: list[dict[str, Any]], fiqa: FIQAResult) -> list[dict[str, Any]]:
    """F-Eval result rows with ``utility`` added from ``fiqa`` (same images, same order); no-face notes join the
    row's ``warnings``, and a FIQA error fills ``error`` only when F-Eval had none."""
    out = []
    for rec, extra in zip(records, fiqa.to_records(), strict=True):
        if rec["image"] != extra["image"]:
            raise ValueError(f"rows out of order: {rec['image']} vs {extra['image']}")
        rec = {**rec, "utility": extra["utility"]}
        if extra.get("warnings"):
            rec["warnings"] = list(dict.fromkeys([*rec.get("warnings", []), *extra["warnings"]]))
        if rec.get("error") is None and extra["error"] is not None:
            rec["error"] = extra["error"]
        out.append(rec)
    return out
