"""``FEvalScorer``: load a checkpoint (or a public base VLM for zero-shot) and score face images."""

from __future__ import annotations

import copy
import logging
import math
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import resolve_checkpoint, scan_for_pickles
from .config import ADAPTERS_DIR, PROJECTORS_NAME, FEvalConfig
from .dimensions import DIM_INDEX, DIMENSIONS, NEEDS_PROMPT, NEEDS_REF, parse_dims
from .errors import FaceModelError, ImageInputError
from .images import ImageItem, broadcast, expand_inputs, load_image, pad_to_aspect
from .model import FEvalModel, Row
from .pipeline import DEFAULT_AHEAD, ObjectPool, Prefetcher, PrefetchStats, chunked, default_workers

logger = logging.getLogger(__name__)

MAX_PROMPT_TOKENS = 256


@dataclass
class ScoreResult:
    """Scores of a batch of images: ``scores[i, j]`` is image ``i`` on ``DIMENSIONS[j]`` (0..100, NaN = n/a)."""

    scores: torch.Tensor
    names: list[str]
    faces: list[int | None]
    errors: list[str | None]
    warnings: list[list[str]] = field(default_factory=list)
    dims: tuple[str, ...] = DIMENSIONS

    def __len__(self) -> int:
        return len(self.names)

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per image (``null`` where a dimension was not scored)."""
        rows = []
        for i, name in enumerate(self.names):
            rec: dict[str, Any] = {"image": name}
            for j, d in enumerate(DIMENSIONS):
                v = float(self.scores[i, j])
                rec[d] = None if math.isnan(v) else round(v, 4)
            rec["faces"] = self.faces[i]
            rec["error"] = self.errors[i]
            if self.warnings and self.warnings[i]:
                rec["warnings"] = self.warnings[i]
            rows.append(rec)
        return rows

    @staticmethod
    def concat(parts: Sequence[ScoreResult]) -> ScoreResult:
        if not parts:
            return ScoreResult(torch.empty(0, len(DIMENSIONS)), [], [], [], [])
        return ScoreResult(
            torch.cat([p.scores for p in parts]), [n for p in parts for n in p.names],
            [f for p in parts for f in p.faces], [e for p in parts for e in p.errors],
            [w for p in parts for w in p.warnings], parts[0].dims)


@dataclass
class _Ready:
    """One input after the CPU-side work (decoding, face detection, image processor), ready for the model."""

    index: int
    name: str
    image: Any = None
    error: str | None = None
    info: Any = None  # FaceInfo, or None without a face encoder
    pixels: Any = None  # PreparedImage for the fast path


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class FEvalScorer:
    """Scores face images on quality, authenticity, identity and correspondence (0..100, higher is better).

    One instance may be shared by several threads: model calls are serialised by a lock.
    """

    def __init__(self, model: FEvalModel, face_encoder: Any | None, *, source: Path | None = None) -> None:
        self.model = model
        self.config = model.config
        self.face_encoder = face_encoder
        self.source = source
        self._lock = threading.RLock()
        # speed settings (see iter_scores); the defaults are the fast path
        self.share_vision = True  # one vision-tower run per image for all its dimensions, when the experts allow it
        self.bucket = True  # LLM passes over rows of similar length instead of one pass padded to the longest
        self.workers: int | None = None  # prefetch threads; None: up to 4 (none for a single image); 0: none
        self.prefetch = DEFAULT_AHEAD  # chunks prepared ahead of the model
        self.max_batch_tokens: int | None = None  # cap on padded tokens per LLM pass (bounds activation memory)
        self.last_prefetch: PrefetchStats | None = None  # what the latest iteration's prefetcher did
        self._processors = ObjectPool(lambda: copy.deepcopy(self.model.processor))  # one per worker thread

    # -- loading / saving ---------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        face_root: str | Path | None = None,
        trust_remote_code: bool = False,
        attn_implementation: str | None = "sdpa",
        face_device: str | torch.device | None = None,
        **hub_kwargs: Any,
    ) -> FEvalScorer:
        """Load a feval checkpoint (folder or hub id) or, given a plain VLM, its zero-shot scorer.

        ``face_device`` runs face detection elsewhere than the model (default: ``device``), e.g. on the GPU
        while the model waits on the CPU until a host such as ComfyUI moves it.
        """
        device = str(device or default_device())
        dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
        folder, config = resolve_checkpoint(path_or_id, **hub_kwargs)
        if trust_remote_code:
            config.trust_remote_code = True
        heads_state = None
        adapters = None
        if folder is not None:
            scan_for_pickles(folder)
            if config.mode == "trained":
                from safetensors.torch import load_file

                proj = folder / PROJECTORS_NAME
                if not proj.is_file():
                    from .errors import CheckpointError

                    raise CheckpointError(f"{folder} is a trained checkpoint but has no {PROJECTORS_NAME}")
                heads_state = load_file(str(proj))
                adapters = folder / ADAPTERS_DIR
        model = FEvalModel.build(config, base_dir=folder, device=device, dtype=dtype, heads_state=heads_state,
                                 adapters_dir=adapters, attn_implementation=attn_implementation,
                                 hub_kwargs=hub_kwargs)
        if dtype in (torch.bfloat16, torch.float16):
            model.cast_experts(dtype)  # scoring only: experts in the model's precision, no fp32 round trips
        faces = _load_face_encoder(config, folder, str(face_device or device), face_root)
        return cls(model, faces, source=folder)

    @classmethod
    def zero_shot(cls, base_model: str, *, face_pack: str = "buffalo_l", face_root: str | Path | None = None,
                  device: str | None = None, dtype: torch.dtype | None = None,
                  face_device: str | torch.device | None = None, **kwargs: Any) -> FEvalScorer:
        """A scorer from a public base VLM alone: rating words + ArcFace cosine for identity."""
        from .config import FaceEncoderConfig

        device = str(device or default_device())
        dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
        config = FEvalConfig(base_model=base_model, mode="zero_shot", score_mode="levels",
                             face=FaceEncoderConfig(pack=face_pack))
        model = FEvalModel.build(config, device=device, dtype=dtype, **kwargs)
        return cls(model, _load_face_encoder(config, None, str(face_device or device), face_root), source=None)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``feval_config.json``, ``projectors.safetensors`` and ``adapters/<dim>/``.

        A backbone or face pack that lives inside the source checkpoint is copied along, so the
        saved folder is self-contained.
        """
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        cfg = FEvalConfig(**{**self.config.to_dict(), "face": dict(vars(self.config.face))})
        if self.source is not None:
            for rel in (cfg.base_model, cfg.face.root):
                if rel and not Path(rel).is_absolute() and (self.source / rel).is_dir():
                    dst = out / rel
                    if dst.resolve() != (self.source / rel).resolve():
                        shutil.copytree(self.source / rel, dst, dirs_exist_ok=True)
        if self.model.heads is not None:
            from safetensors.torch import save_file

            from .model import save_experts

            state = {k: v.detach().contiguous().cpu() for k, v in self.model.heads.state_dict().items()}
            save_file(state, str(out / PROJECTORS_NAME), metadata={"format": "pt"})
            save_experts(self.model.backbone, out / ADAPTERS_DIR)
        cfg.save(out)
        return out

    # -- scoring ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.device

    def score(self, images: Any, prompts: str | Sequence[str | None] | None = None, refs: Any = None,
              dims: str | Sequence[str] | None = None, *, batch_size: int = 8) -> ScoreResult:
        """Score images. ``prompts``/``refs``: one per image or one for all. Returns all rows, in order."""
        return ScoreResult.concat(list(self.iter_scores(images, prompts, refs, dims, batch_size=batch_size)))

    def iter_scores(self, images: Any, prompts: Any = None, refs: Any = None, dims: Any = None, *,
                    batch_size: int = 8, items: list[ImageItem] | None = None) -> Iterator[ScoreResult]:
        """Like :meth:`score`, one :class:`ScoreResult` per chunk of ``batch_size`` images (for streaming).

        Worker threads (:attr:`workers`) decode images, detect faces and run the image processor up to
        :attr:`prefetch` chunks ahead of the model, so only a bounded window of images is ever in memory.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        items = items if items is not None else expand_inputs(images)
        n = len(items)
        prompt_list = broadcast(prompts, n, "prompts")
        bad = next((p for p in prompt_list if p is not None and not isinstance(p, str)), None)
        if bad is not None:
            raise TypeError(f"prompts must be strings (or None), got {type(bad).__name__}: pass one text per image")
        ref_list = _broadcast_refs(refs, n)
        wanted = tuple(d for d in parse_dims(dims) if d in self.config.dims)
        ref_cache: dict[int, tuple[Any, Any, str | None]] = {}
        ref_prepared: dict[int, Any] = {}  # id(reference image) -> PreparedImage, kept for the whole run
        fast = self.share_vision and self.model.can_share_vision
        workers = self.workers if self.workers is not None else (0 if n <= 1 else default_workers())

        def prepare(index: int, processor: Any) -> _Ready:
            item = items[index]
            try:
                image = pad_to_aspect(load_image(item))
            except ImageInputError as exc:
                return _Ready(index, item.name, error=str(exc))
            info = self.face_encoder.analyze(image) if self.face_encoder is not None else None
            pixels = self.model.prepare_image(image, processor) if fast else None
            return _Ready(index, item.name, image, None, info, pixels)

        prefetcher = Prefetcher(chunked(range(n), batch_size), prepare, workers=workers, ahead=self.prefetch,
                                make_state=self._processors.acquire, release_state=self._processors.release)
        self.last_prefetch = prefetcher.stats
        for ready in prefetcher:
            idx = [r.index for r in ready]
            yield self._score_chunk(ready, [prompt_list[i] for i in idx], [ref_list[i] for i in idx], wanted,
                                    ref_cache, ref_prepared)

    def _score_chunk(self, ready: list[_Ready], prompts: list[Any], refs: list[Any], dims: tuple[str, ...],
                     ref_cache: dict[int, tuple[Any, Any, str | None]], ref_prepared: dict[int, Any]) -> ScoreResult:
        n = len(ready)
        scores = torch.full((n, len(DIMENSIONS)), float("nan"), dtype=torch.float32)
        errors: list[str | None] = [r.error for r in ready]
        warnings: list[list[str]] = [[] for _ in range(n)]
        faces_count: list[int | None] = [None] * n
        images: list[Any] = [r.image for r in ready]
        ok = [i for i in range(n) if images[i] is not None]
        with self._lock, torch.inference_mode():
            infos = [ready[i].info for i in ok]
            face_of: dict[int, Any] = {}
            for i, info in zip(ok, infos):
                face_of[i] = info
                faces_count[i] = None if info is None else int(info.num_faces)
                if info is not None and info.num_faces == 0:
                    warnings[i].append("no face detected in the image")
            rows: list[Row] = []
            where: list[tuple[int, int]] = []
            for i in ok:
                info = face_of[i]
                emb = info.embedding if info is not None else None
                for d in dims:
                    if d in NEEDS_PROMPT:
                        prompt = _clean_prompt(prompts[i], self.model.processor.tokenizer, warnings[i])
                        if prompt is None:  # NaN: no prompt, no correspondence
                            continue
                    else:
                        prompt = None
                    ref_img = ref_face = None
                    if d in NEEDS_REF:
                        if refs[i] is None:
                            continue
                        ref_img, ref_info, ref_err = self._load_ref(refs[i], ref_cache)
                        if ref_err:
                            warnings[i].append(ref_err)
                            continue
                        ref_face = ref_info.embedding if ref_info is not None else None
                        blocked = _identity_blocker(self.face_encoder, info, ref_info)
                        if blocked:
                            warnings[i].append(blocked)
                            continue
                        if not self.model.trained:
                            scores[i, DIM_INDEX[d]] = _arcface_identity(emb, ref_face)
                            continue
                    rows.append(Row(images[i], d, prompt=prompt, ref=ref_img, face=emb, ref_face=ref_face))
                    where.append((i, DIM_INDEX[d]))
            if rows:
                prepared = dict(ref_prepared)
                prepared.update({id(r.image): r.pixels for r in ready if r.pixels is not None})
                out = self.model.score_rows(rows, prepared, share_vision=self.share_vision, bucket=self.bucket,
                                            max_batch_tokens=self.max_batch_tokens)
                for row in rows:
                    if row.ref is not None and id(row.ref) in prepared:
                        ref_prepared[id(row.ref)] = prepared[id(row.ref)]
                vals = self.model.scores(out).float().cpu()
                for (i, j), v in zip(where, vals.tolist()):
                    scores[i, j] = v
        names = [r.name for r in ready]
        return ScoreResult(scores, names, faces_count, errors, warnings, dims)

    # -- faces --------------------------------------------------------------------------------
    def _analyze(self, images: list[Any]) -> list[Any]:
        if self.face_encoder is None or not images:
            return [None] * len(images)
        return [self.face_encoder.analyze(img) for img in images]

    def _load_ref(self, ref: Any, cache: dict[int, tuple[Any, Any, str | None]]) -> tuple[Any, Any, str | None]:
        key = id(ref) if not isinstance(ref, (str, Path)) else hash(str(ref))
        if key not in cache:
            try:
                img = pad_to_aspect(load_image(ref))
            except ImageInputError as exc:
                cache[key] = (None, None, f"reference unusable: {exc}")
            else:
                info = self._analyze([img])[0]
                cache[key] = (img, info, None)
        return cache[key]

def _identity_blocker(face_encoder: Any, info: Any, ref_info: Any) -> str | None:
    """Why identity cannot be scored for this pair, or None. One rule for every mode and caller.

    Identity fidelity compares two faces: without a face detector, or with no face found in the image
    or the reference, it is not applicable (NaN) rather than a number.
    """
    if face_encoder is None:
        return "identity needs the insightface model pack; none is loaded"
    missing = [what for what, fi in (("image", info), ("reference image", ref_info)) if fi is None or not fi.has_face]
    if missing:
        return f"no face detected in the {' and the '.join(missing)}; identity not scored"
    return None


def _arcface_identity(emb: np.ndarray, ref_emb: np.ndarray) -> float:
    """Zero-shot identity: ArcFace cosine mapped to 0..100."""
    from .faces import FaceEncoder, arcface_identity_score

    return float(arcface_identity_score(FaceEncoder.cosine(emb, ref_emb)))


def _broadcast_refs(refs: Any, n: int) -> list[Any]:
    """One reference for all images, or one per image (a 4-D batch counts per image)."""
    if isinstance(refs, torch.Tensor) and refs.ndim == 4 and refs.shape[0] == n and n > 1:
        return list(refs)
    if isinstance(refs, np.ndarray) and refs.ndim == 4 and refs.shape[0] == n and n > 1:
        return list(refs)
    return broadcast(refs, n, "refs")


def _clean_prompt(prompt: Any, tokenizer: Any, warns: list[str]) -> str | None:
    if prompt is None:
        return None
    if not isinstance(prompt, str):
        raise TypeError(f"prompts must be strings, got {type(prompt).__name__}")
    prompt = " ".join(prompt.split())
    if not prompt:
        return None
    if not prompt.isascii() and prompt != (fixed := prompt.encode("utf-8", "replace").decode("utf-8")):
        prompt = fixed  # lone surrogates (e.g. undecodable bytes in argv) cannot be tokenized
        warns.append("prompt held characters that are not valid Unicode; they were replaced by '?'")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if len(ids) > MAX_PROMPT_TOKENS:
        prompt = tokenizer.decode(ids[:MAX_PROMPT_TOKENS])
        warns.append(f"prompt truncated to its first {MAX_PROMPT_TOKENS} tokens")
    return prompt


def _load_face_encoder(config: FEvalConfig, folder: Path | None, device: str, face_root: str | Path | None) -> Any:
    from .faces import FaceEncoder

    root: str | Path | None = face_root
    if root is None and config.face.root:
        r = Path(config.face.root)
        root = r if r.is_absolute() or folder is None else folder / r
    try:
        return FaceEncoder(config.face.pack, root=root, device=device,
                           det_size=(config.face.det_size, config.face.det_size), det_thresh=config.face.det_thresh)
    except FaceModelError:
        if config.mode == "trained":
            raise
        logger.warning("no insightface pack %r found: zero-shot identity scores will be NaN and face counts null",
                       config.face.pack)
        return None
