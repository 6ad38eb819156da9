"""Training data: manifest rows to (image, dimension) examples, the face-embedding cache, batches.

Faces are detected once per image (main process) and cached in ``face_cache.safetensors`` in the run folder;
the collator loads images and builds :class:`~feval_core.model.lmm.FEvalBatch` es with their MOS targets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.manifest import ManifestRow, read_manifest, reference_of, write_manifest
from ..dimensions import DIM_INDEX, DIMENSIONS, EVAL_PROMPTS
from ..errors import ImageInputError, ManifestError
from .config import TrainConfig

logger = logging.getLogger(__name__)

FACE_CACHE_NAME = "face_cache.safetensors"
SPLITS_DIR = "splits"
SKIPPED_NAME = "skipped_images.jsonl"


@dataclass(frozen=True)
class Example:
    """One training question: an image on one dimension, with its MOS."""

    image: str
    dim: str
    mos: float
    task: str
    prompt: str | None = None
    ref: str | None = None
    lq: str | None = None  # quality of a restoration: its low-quality input, shown beside it


def expand_rows(rows: Sequence[ManifestRow], dims: Sequence[str] | None = None) -> list[Example]:
    """Each manifest row with ``k`` MOS (of the wanted ``dims``) becomes ``k`` examples.

    The reference of identity is ``ref``, or for restorations without one, the low-quality input ``lq``; the
    quality example of a restoration with ``lq`` shows that input beside the restored image.
    """
    wanted = set(dims or DIMENSIONS)
    out: list[Example] = []
    for row in rows:
        for dim in DIMENSIONS:
            if dim not in row.mos or dim not in wanted:
                continue
            ref = reference_of(row)
            if dim == "identity" and ref is None:
                raise ManifestError(f"line {row.line} ({row.image}): identity MOS needs a 'ref' (or 'lq' for a "
                                    "restoration)")
            out.append(Example(str(row.image), dim, float(row.mos[dim]), row.task,
                               row.prompt if dim == "correspondence" else None,
                               str(ref) if dim == "identity" else None,
                               str(row.lq) if dim == "quality" and row.lq is not None else None))
    return out


def eval_prompt(ex: Example) -> str:
    """The evaluation prompt of an example, as the router sees it."""
    return EVAL_PROMPTS[ex.dim].format(prompt=(ex.prompt or "").strip())


class FaceCache:
    """ArcFace embeddings per image file, computed once and kept in ``face_cache.safetensors``.

    Keys are the file's absolute path, size and modification time, so an edited image is embedded again.
    An image without a face maps to ``None``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, np.ndarray | None] = {}
        self.failed: dict[str, str] = {}  # path -> why it could not be read (not cached: retried next run)
        if path.is_file():
            from safetensors import safe_open

            with safe_open(str(path), "np") as f:
                keys = json.loads((f.metadata() or {}).get("keys", "[]"))
                emb = f.get_tensor("embeddings") if keys else np.zeros((0, 0), np.float32)
                has = f.get_tensor("has_face") if keys else np.zeros(0, np.uint8)
            for i, k in enumerate(keys):
                self.entries[k] = emb[i].copy() if has[i] else None

    @staticmethod
    def key(path: str | Path) -> str:
        p = Path(path).absolute()
        try:
            st = p.stat()
        except OSError:  # a missing file: a key no cache entry has, so it counts as missing
            return f"unreadable:{p}"
        return hashlib.sha1(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()

    def missing(self, paths: Sequence[str]) -> list[str]:
        return [p for p in dict.fromkeys(paths) if self.key(p) not in self.entries]

    def fill(self, paths: Sequence[str], encoder: Any, *, progress: bool = True) -> int:
        """Embed the images not cached yet; returns how many were embedded. Unreadable ones go to ``failed``."""
        from tqdm.auto import tqdm

        from ..inputs.images import load_image

        todo = self.missing(paths)
        failed = 0
        for p in tqdm(todo, desc="detecting faces", unit="img", disable=not progress or None):
            try:
                info = encoder.analyze(load_image(p))
            except (ImageInputError, OSError) as exc:  # one bad file never stops the run: it stays uncached
                self.failed[p] = str(exc)
                failed += 1
                continue
            self.entries[self.key(p)] = None if info.embedding is None else np.asarray(info.embedding, np.float32)
        return len(todo) - failed

    def get(self, path: str) -> np.ndarray | None:
        return self.entries[self.key(path)]

    def save(self) -> None:
        from safetensors.numpy import save_file

        keys = list(self.entries)
        dim = next((len(v) for v in self.entries.values() if v is not None), 512)
        emb = np.zeros((len(keys), dim), np.float32)
        has = np.zeros(len(keys), np.uint8)
        for i, k in enumerate(keys):
            v = self.entries[k]
            if v is not None:
                emb[i], has[i] = v, 1
        tmp = self.path.with_name(self.path.name + ".tmp")
        save_file({"embeddings": emb, "has_face": has}, str(tmp), metadata={"keys": json.dumps(keys)})
        os.replace(tmp, self.path)


class RowDataset(torch.utils.data.Dataset):
    """Indices into a list of :class:`Example`; the collator turns them into model batches."""

    def __init__(self, examples: Sequence[Example]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> int:
        return i


@dataclass
class TrainBatch:
    """The rows of a training batch and, for the shared-vision path, each distinct image run through the
    processor (in the order :meth:`images` walks them, so it survives pickling into DataLoader workers)."""

    rows: list[Any]
    prepared: list[Any]

    @staticmethod
    def images(rows: Sequence[Any]) -> list[Any]:
        """The distinct image objects of ``rows`` (image, then reference), in order."""
        seen: dict[int, Any] = {}
        for row in rows:
            for im in (row.image, row.ref, row.lq):
                if im is not None and id(im) not in seen:
                    seen[id(im)] = im
        return list(seen.values())

    def prepared_by_id(self) -> dict[int, Any]:
        """``id(image) -> PreparedImage`` for :meth:`~feval_core.model.lmm.FEvalModel.score_rows`."""
        return {id(im): p for im, p in zip(self.images(self.rows), self.prepared)}

    @property
    def dims(self) -> list[str]:
        return [r.dim for r in self.rows]

    @property
    def dim_idx(self) -> torch.Tensor:
        """Each row's dimension as an index into :data:`DIMENSIONS` (the router's target)."""
        return torch.tensor([DIM_INDEX[r.dim] for r in self.rows], dtype=torch.long)


class Collator:
    """Loads images and cached faces into rows (each file once per batch), cleans prompts as scoring does, runs
    the processor on every distinct image when the model scores through the shared-vision path, and adds the
    targets. It holds the model's processor, not the model (DataLoader workers get a copy of it)."""

    def __init__(self, model: Any, examples: Sequence[Example], faces: FaceCache) -> None:
        self.processor = model.processor
        self.share_vision = bool(model.can_share_vision)
        self.examples = list(examples)
        self.faces = {k: v for k, v in faces.entries.items()}
        self._keys = {p: FaceCache.key(p) for p in {e.image for e in examples} | {e.ref for e in examples if e.ref}}

    def __call__(self, indices: Sequence[int]) -> dict[str, Any]:
        from ..inputs.images import load_image, pad_to_aspect
        from ..model.rows import Row
        from ..model.shared_vision import prepare_image
        from ..scoring.plan import clean_prompt

        cache: dict[str, Any] = {}

        def image(path: str) -> Any:
            if path not in cache:
                cache[path] = pad_to_aspect(load_image(path))
            return cache[path]

        exs = [self.examples[i] for i in indices]
        tok = self.processor.tokenizer
        rows = [Row(image(ex.image), ex.dim, prompt=clean_prompt(ex.prompt, tok, []),
                    ref=image(ex.ref) if ex.ref else None,
                    face=self.faces[self._keys[ex.image]], ref_face=self.faces[self._keys[ex.ref]] if ex.ref else None,
                    lq=image(ex.lq) if ex.lq else None)
                for ex in exs]
        prepared = [prepare_image(self.processor, im) for im in TrainBatch.images(rows)] if self.share_vision else []
        return {
            "batch": TrainBatch(rows, prepared),
            "mos": torch.tensor([ex.mos for ex in exs], dtype=torch.float32),
            "index": torch.tensor(list(indices), dtype=torch.long),
            "prompts": [eval_prompt(ex) for ex in exs],
        }


class EpochSampler(torch.utils.data.Sampler[int]):
    """A fresh permutation per epoch, fixed by ``seed`` and the epoch (so a resumed run sees the same order)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def split_train_val(cfg: TrainConfig, out: Path, main: bool) -> tuple[list[ManifestRow], list[ManifestRow]]:
    """The training and validation rows: ``val_manifest``, or a held-out split of the training manifest."""
    rows = read_manifest(cfg.manifest)
    if cfg.val_manifest:
        return rows, read_manifest(cfg.val_manifest)
    if cfg.val_fraction == 0:
        return rows, []
    from ..data.splits import split_rows

    by: str | None = cfg.split_by
    if by == "auto":
        by = "model" if all(r.model for r in rows) and len({r.model for r in rows}) >= 3 else "image"
    parts = split_rows(rows, fractions=(1.0 - cfg.val_fraction, cfg.val_fraction, 0.0), seed=cfg.split_seed,
                       by=None if by == "none" else by)
    if main:
        for name in ("train", "val"):
            write_manifest(parts[name], out / SPLITS_DIR / f"{name}.jsonl")
    logger.info("held out %d of %d rows for validation (split by %s, seed %d)", len(parts["val"]), len(rows), by,
                cfg.split_seed)
    return parts["train"], parts["val"]


def prepare_data(cfg: TrainConfig, out: Path, accelerator: Any) -> tuple[list[Example], list[Example],
                                                                       tuple[str, ...], FaceCache]:
    """Read and split the manifests, expand them into examples and embed every face once (main process)."""
    main = accelerator.is_main_process
    train_rows, val_rows = split_train_val(cfg, out, main)
    dims = cfg.dims or tuple(d for d in DIMENSIONS if any(d in r.mos for r in train_rows))
    train_ex = expand_rows(train_rows, dims)
    val_ex = expand_rows(val_rows, dims)
    if not train_ex:
        raise ManifestError(f"no training rows with a MOS for {', '.join(dims)} in {cfg.manifest}")
    missing_dims = [d for d in dims if not any(e.dim == d for e in train_ex)]
    if missing_dims:
        raise ManifestError(f"no training MOS for {missing_dims}; drop them from --dims")
    cache = FaceCache(out / FACE_CACHE_NAME)
    paths = ([e.image for e in train_ex + val_ex] + [e.ref for e in train_ex + val_ex if e.ref]
             + [e.lq for e in train_ex + val_ex if e.lq])
    if main:
        todo = cache.missing(paths)
        if todo:
            from ..faces.encoder import FaceEncoder

            device = str(accelerator.device) if accelerator.device.type == "cuda" else "cpu"
            encoder = FaceEncoder(cfg.face_pack, root=abs_or_none(cfg.face_root), device=device,
                                  det_size=(cfg.det_size, cfg.det_size), det_thresh=cfg.det_thresh)
            cache.fill(todo, encoder, progress=cfg.progress)
            cache.save()
            del encoder
    accelerator.wait_for_everyone()
    if not main:
        cache = FaceCache(out / FACE_CACHE_NAME)
    unreadable = set(cache.missing(paths))  # the same on every process: what the main process could not read
    if unreadable:
        train_ex, val_ex = _readable(train_ex, unreadable), _readable(val_ex, unreadable)
        logger.warning("%d images could not be read and are left out (%d training examples remain); see %s",
                       len(unreadable), len(train_ex), out / SKIPPED_NAME)
        if main:
            with (out / SKIPPED_NAME).open("w", encoding="utf-8") as fh:
                for p in sorted(unreadable):
                    fh.write(json.dumps({"image": p, "error": cache.failed.get(p, "unreadable")}) + "\n")
        if not train_ex:
            raise ManifestError(f"none of the training images in {cfg.manifest} could be read; see "
                                f"{out / SKIPPED_NAME}")
    readable = [p for p in dict.fromkeys(paths) if p not in unreadable]
    no_face = sum(1 for p in readable if cache.get(p) is None)
    if no_face:
        logger.info("%d of %d images have no detected face (they get the learned 'no face' tokens)", no_face,
                    len(readable))
    # Identity compares two faces; the scorer leaves it NaN when either is missing, so training skips those rows.
    return _scorable(train_ex, cache, "training"), _scorable(val_ex, cache, "validation"), dims, cache


def _readable(examples: list[Example], unreadable: set[str]) -> list[Example]:
    return [e for e in examples if e.image not in unreadable and (e.ref is None or e.ref not in unreadable)
            and (e.lq is None or e.lq not in unreadable)]


def _scorable(examples: list[Example], cache: FaceCache, name: str) -> list[Example]:
    """Drop identity rows whose image or reference has no detected face (not scorable, see the scorer)."""
    keep = [e for e in examples if e.dim != "identity" or (cache.get(e.image) is not None
                                                          and cache.get(e.ref) is not None)]
    if len(keep) < len(examples):
        logger.info("%d %s identity rows have no face in the image or reference; left out", len(examples) - len(keep),
                    name)
    return keep


def abs_or_none(path: str | None) -> str | None:
    """``path`` made absolute (``~`` expanded), or None."""
    return str(Path(path).expanduser().absolute()) if path else None

