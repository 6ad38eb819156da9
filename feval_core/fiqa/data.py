"""FIQA data: identity folders (one folder per person), pairs lists, and faces aligned once with the face pack.

An identity-folder data set is the layout of CASIA-WebFace / MS1MV2 image dumps: ``ROOT/<identity>/<image>``.
Every image goes through the face pack once: the main (largest) face is found and warped with its 5 landmarks to
the 112x112 ArcFace template (insightface's ``norm_crop`` similarity transform, :class:`FaceInfo.crop`). An image
that cannot be read or shows no face is left out and recorded with its reason; the others go on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ManifestError

logger = logging.getLogger(__name__)

CROP = 112


@dataclass(frozen=True)
class Sample:
    """One image of a FIQA data set: its path and identity (the folder name; None in a pairs list)."""

    path: str
    identity: str | None = None


@dataclass
class AlignedFaces:
    """The samples whose main face was found, with what the face pack measured on each."""

    samples: list[Sample]
    crops: np.ndarray  # [N, 112, 112, 3] uint8 RGB, ArcFace-aligned
    embeddings: np.ndarray  # [N, D] float32, unit norm (the face pack's recognizer)
    norms: np.ndarray  # [N] float32, the recognizer's embedding norm before normalising
    det_scores: np.ndarray  # [N] float32, the detector's confidence
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"image", "error"} for every sample left out


def identity_folders(root: str | Path, min_images: int = 1) -> list[Sample]:
    """The images of ``root/<identity>/`` (sorted; hidden entries skipped), identities with >= ``min_images``."""
    from ..inputs.images import IMAGE_EXTENSIONS

    root = Path(root).expanduser()
    if not root.is_dir():
        raise ManifestError(f"{root}: no such folder; give a folder with one sub-folder of images per identity")
    samples: list[Sample] = []
    for person in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in person.iterdir() if f.is_file() and not f.name.startswith(".")
                       and f.suffix.lower() in IMAGE_EXTENSIONS)
        if len(files) >= min_images:
            samples.extend(Sample(str(f), person.name) for f in files)
    identities = {s.identity for s in samples}
    if len(identities) < 2:
        raise ManifestError(f"{root}: found {len(identities)} identity folder(s) with images; give a folder with "
                            "one sub-folder per person (ROOT/<identity>/<image>), at least two people")
    return samples


def read_pairs(path: str | Path) -> tuple[list[Sample], list[tuple[int, int, bool]]]:
    """A pairs list: one comparison per line, ``IMAGE_A IMAGE_B LABEL`` (LABEL 1 = same person, 0 = not;
    separated by tabs, commas or spaces; paths relative to the list's folder; ``#`` starts a comment).

    Returns the distinct samples and the comparisons as (index a, index b, mated).
    """
    path = Path(path).expanduser()
    base = path.parent
    index: dict[str, int] = {}
    samples: list[Sample] = []
    pairs: list[tuple[int, int, bool]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.replace("\t", ",").split(",") if ("," in text or "\t" in text) else text.split()
        parts = [p.strip() for p in parts]
        if len(parts) != 3 or parts[2] not in ("0", "1"):
            raise ManifestError(f"{path} line {n}: expected 'IMAGE_A IMAGE_B LABEL' with LABEL 1 (same person) or 0, "
                                f"got {line!r}")
        ids = []
        for p in parts[:2]:
            full = p if os.path.isabs(p) else str(base / p)
            if full not in index:
                index[full] = len(samples)
                samples.append(Sample(full))
            ids.append(index[full])
        pairs.append((ids[0], ids[1], parts[2] == "1"))
    if not any(m for *_, m in pairs) or all(m for *_, m in pairs):
        raise ManifestError(f"{path}: needs both mated (label 1) and non-mated (label 0) pairs")
    return samples, pairs


def align_faces(samples: Sequence[Sample], encoder: Any,
                progress: Callable[[int], None] | None = None) -> AlignedFaces:
    """Find and align the main face of every sample; unreadable or faceless images are left out with a reason."""
    from ..errors import ImageInputError
    from ..inputs.images import load_image

    kept, crops, embs, norms, scores, skipped = [], [], [], [], [], []
    for s in samples:
        try:
            info = encoder.analyze(load_image(s.path))
        except (ImageInputError, OSError) as exc:
            skipped.append({"image": s.path, "error": str(exc)})
        else:
            if not info.has_face:
                skipped.append({"image": s.path, "error": "no face detected"})
            else:
                kept.append(s)
                crops.append(info.crop)
                embs.append(info.embedding)
                norms.append(getattr(info, "embedding_norm", None) or np.nan)
                scores.append(info.det_score)
        if progress is not None:
            progress(1)
    if skipped:
        logger.warning("%d of %d images left out (first: %s: %s)", len(skipped), len(samples),
                       skipped[0]["image"], skipped[0]["error"])
    dim = embs[0].shape[0] if embs else 512
    return AlignedFaces(kept, np.stack(crops) if crops else np.zeros((0, CROP, CROP, 3), np.uint8),
                        np.stack(embs).astype(np.float32) if embs else np.zeros((0, dim), np.float32),
                        np.asarray(norms, np.float32), np.asarray(scores, np.float32), skipped)


def save_aligned(faces: AlignedFaces, path: Path) -> None:
    """Write aligned faces as one safetensors file (sample list in its JSON metadata)."""
    import json

    import torch
    from safetensors.torch import save_file

    tensors = {"crops": torch.from_numpy(np.ascontiguousarray(faces.crops)),
               "embeddings": torch.from_numpy(faces.embeddings), "norms": torch.from_numpy(faces.norms),
               "det_scores": torch.from_numpy(faces.det_scores)}
    meta = {"samples": json.dumps([[s.path, s.identity] for s in faces.samples]),
            "skipped": json.dumps(faces.skipped)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_aligned(path: Path) -> AlignedFaces:
    """Read what :func:`save_aligned` wrote."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        meta = f.metadata() or {}
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    samples = [Sample(p, i) for p, i in json.loads(meta.get("samples", "[]"))]
    return AlignedFaces(samples, arrays["crops"], arrays["embeddings"], arrays["norms"], arrays["det_scores"],
                        json.loads(meta.get("skipped", "[]")))
