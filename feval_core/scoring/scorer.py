"""``FEvalScorer``: load a checkpoint (or a public base VLM for zero-shot) and score face images."""

from __future__ import annotations

import copy
import functools
import logging
import math
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..dimensions import DIM_INDEX, DIMENSIONS, EVAL_PROMPTS, PREFILTERED, parse_dims
from ..errors import ConfigError, FaceModelError, ImageInputError
from ..faces.identity import NO_FACE_IN_IMAGE, face_notes
from ..inputs.images import (
    ImageItem,
    expand_inputs,
    load_image,
    pad_to_aspect,
)
from ..inputs.prefetch import (
    DEFAULT_AHEAD,
    ObjectPool,
    Prefetcher,
    PrefetchStats,
    chunked,
    default_workers,
)
from ..model.backbone import default_dtype
from ..model.checkpoint import TrainedWeights, resolve_checkpoint
from ..model.config import FEvalConfig
from ..model.lmm import FEvalModel
from ..model.rows import Row
from .plan import (
    Asked,
    Question,
    References,
    broadcast_refs,
    clean_text,
    line_up,
    plan_questions,
)
from .prefilter import PrefilterPass, check_threshold, run_prefilter, skipped
from .result import ScoreResult, complete_missing

logger = logging.getLogger(__name__)

MAX_PROMPT_TOKENS = 256


@dataclass
class _Ready:
    """One input after the CPU-side work (decoding, face detection, image processor), ready for the model."""

    index: int
    name: str
    image: Any = None
    error: str | None = None
    info: Any = None  # FaceInfo, or None without a face encoder
    pixels: Any = None  # PreparedImage for the fast path
    prefilter: float = math.nan  # the pre-filter's score, when scoring with one


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
        # one processor copy per worker thread; the factory holds the processor, not the scorer, so that a scorer
        # and its model are freed as soon as the last reference goes (no cycle for the garbage collector to find)
        self._processors = ObjectPool(functools.partial(copy.deepcopy, model.processor))

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
        merge_vision: bool = True,
        **hub_kwargs: Any,
    ) -> FEvalScorer:
        """Load a feval checkpoint (folder or hub id) or, given a plain VLM, its zero-shot scorer.

        ``face_device`` runs face detection elsewhere than the model (default: ``device``), e.g. on the GPU
        while the model waits on the CPU until a host such as ComfyUI moves it. ``merge_vision`` (default):
        a shared vision expert is merged into the vision tower, which then runs as a plain tower
        (:meth:`~feval_core.model.lmm.FEvalModel.merge_vision_expert`); pass False to train, resume or save the
        loaded model, or to compare with the unmerged expert. Per-dimension vision experts are never merged.
        """
        device = str(device or default_device())
        dtype = dtype or default_dtype(device)
        folder, config = resolve_checkpoint(path_or_id, **hub_kwargs)
        if trust_remote_code:
            config.trust_remote_code = True
        weights = TrainedWeights.load(folder, config) if folder is not None else TrainedWeights()
        model = FEvalModel.build(config, base_dir=folder, device=device, dtype=dtype, heads_state=weights.heads,
                                 adapters_dir=weights.adapters, attn_implementation=attn_implementation,
                                 hub_kwargs=hub_kwargs, vision_projector_state=weights.vision_projector,
                                 merge_vision=merge_vision)
        if dtype in (torch.bfloat16, torch.float16):
            model.cast_experts(dtype)  # scoring only: experts in the model's precision, no fp32 round trips
        faces = _load_face_encoder(config, folder, str(face_device or device), face_root)
        return cls(model, faces, source=folder)

    @classmethod
    def zero_shot(cls, base_model: str, *, face_pack: str = "buffalo_l", face_root: str | Path | None = None,
                  device: str | None = None, dtype: torch.dtype | None = None,
                  face_device: str | torch.device | None = None, **kwargs: Any) -> FEvalScorer:
        """A scorer from a public base VLM alone: rating words + ArcFace cosine for identity."""
        from ..model.config import FaceEncoderConfig

        device = str(device or default_device())
        dtype = dtype or default_dtype(device)
        config = FEvalConfig(base_model=base_model, mode="zero_shot", score_mode="levels",
                             face=FaceEncoderConfig(pack=face_pack))
        model = FEvalModel.build(config, device=device, dtype=dtype, **kwargs)
        return cls(model, _load_face_encoder(config, None, str(face_device or device), face_root), source=None)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``feval_config.json``, ``projectors.safetensors``, ``adapters/<name>/`` and, when trained,
        ``vision_projector.safetensors``.

        A backbone or face pack that lives inside the source checkpoint is copied along, so the
        saved folder is self-contained.
        """
        self.model.check_unmerged("save it as a checkpoint")  # before anything is written
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
            TrainedWeights.save(self.model, out)
        cfg.save(out)
        return out

    # -- scoring ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.device

    def score(self, images: Any, prompts: str | Sequence[str | None] | None = None, refs: Any = None,
              dims: str | Sequence[str] | None = None, *, batch_size: int = 8, questions: Sequence[str] | None = None,
              lq: Any = None, prefilter: Any = None, prefilter_threshold: float | None = None,
              keep_faces: bool = False) -> ScoreResult:
        """Score images. ``prompts``/``refs``: one per image or one for all. Returns all rows, in order.

        ``questions``: questions in your own words ("How natural does this face look?"): the router picks the
        expert of each, and :attr:`ScoreResult.answers` says which dimension, with its probability, and the score
        (with questions, ``dims`` defaults to none). ``lq``: the low-quality input of each restored image (one per
        image or one for all): the quality row compares the restoration with it, as FaceQ's raters did.

        ``prefilter``: a landmark pre-filter (``LandmarkPrefilter.from_pretrained(DIR)``): every row gets its score
        (:attr:`ScoreResult.prefilter`), and with ``prefilter_threshold`` a face scoring under it is not given to the
        LMM (its dimensions are NaN with the reason "skipped by the pre-filter", and a warning says so); an image
        without a face is never skipped. The pre-filter reuses this scorer's face detections when its face pack is
        the same one. ``keep_faces``: keep each image's ``FaceInfo`` (:attr:`ScoreResult.face_info`) for other scorers
        to reuse, e.g. ``FIQAScorer.score(images, faces=result.face_info)``.
        """
        return ScoreResult.concat(list(self.iter_scores(
            images, prompts, refs, dims, batch_size=batch_size, questions=questions, lq=lq, prefilter=prefilter,
            prefilter_threshold=prefilter_threshold, keep_faces=keep_faces)))

    def route_questions(self, questions: Sequence[str]) -> list[Asked]:
        """The expert the router picks for each question, among this checkpoint's dimensions, with its probability."""
        if not self.model.trained:
            raise ConfigError("questions in your own words need a trained checkpoint (its router picks the expert); "
                              "a zero-shot model has none: ask for dimensions by name (dims=...)")
        if isinstance(questions, str) or not all(isinstance(q, str) and q.strip() for q in questions):
            raise TypeError("questions must be a list of non-empty strings")
        tokenizer = self.model.processor.tokenizer
        with self._lock, torch.inference_mode():
            logits = self.model.route(list(questions)).float().cpu()
        allowed = [DIM_INDEX[d] for d in self.config.dims]
        probs = logits[:, allowed].softmax(-1)
        return [Asked(" ".join(q.split()), self.config.dims[int(k)], float(p[k]), clean_text(q, tokenizer))
                for q, p, k in zip(questions, probs, probs.argmax(-1))]

    def iter_scores(self, images: Any, prompts: Any = None, refs: Any = None, dims: Any = None, *,
                    batch_size: int = 8, items: list[ImageItem] | None = None, questions: Sequence[str] | None = None,
                    lq: Any = None, prefilter: Any = None, prefilter_threshold: float | None = None,
                    keep_faces: bool = False) -> Iterator[ScoreResult]:
        """Like :meth:`score`, one :class:`ScoreResult` per chunk of ``batch_size`` images (for streaming).

        Worker threads (:attr:`workers`) decode images, detect faces and run the image processor up to
        :attr:`prefetch` chunks ahead of the model, so only a bounded window of images is ever in memory.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        check_threshold(prefilter, prefilter_threshold)
        if prefilter is not None and self.face_encoder is not None:
            prefilter.share_faces(self.face_encoder)  # e.g. a 106-point pre-filter has the encoder add landmarks
        items = items if items is not None else expand_inputs(images)
        n = len(items)
        prompt_list, ref_list = line_up(n, prompts, refs)
        lq_list = broadcast_refs(lq, n)
        asked = self.route_questions(questions) if questions else []
        wanted = () if asked and not dims else tuple(d for d in parse_dims(dims) if d in self.config.dims)
        plan = _Plan(wanted, asked, self._experts(wanted), References(self.face_encoder), References(None))
        fast = self.share_vision and self.model.can_share_vision
        workers = self.workers if self.workers is not None else (0 if n <= 1 else default_workers())
        if self.face_encoder is not None and hasattr(self.face_encoder, "allow_sessions"):
            self.face_encoder.allow_sessions(workers)  # every worker may detect at the same time

        def prepare(index: int, processor: Any) -> _Ready:
            item = items[index]
            try:
                loaded = load_image(item)
            except ImageInputError as exc:
                return _Ready(index, item.name, error=str(exc))
            image = pad_to_aspect(loaded)  # for the VLM; faces are found in the image as given
            info = self.face_encoder.analyze(loaded) if self.face_encoder is not None else None
            pre = run_prefilter(prefilter, [item], [info], None).values[0] if prefilter is not None else math.nan
            needed = fast and not skipped([pre], prefilter_threshold)[0]  # a skipped face never reaches the LMM
            pixels = self.model.prepare_image(image, processor) if needed else None
            return _Ready(index, item.name, image, None, info, pixels, pre)

        prefetcher = Prefetcher(chunked(range(n), batch_size), prepare, workers=workers, ahead=self.prefetch,
                                make_state=self._processors.acquire, release_state=self._processors.release)
        self.last_prefetch = prefetcher.stats
        for ready in prefetcher:
            idx = [r.index for r in ready]
            pre = PrefilterPass.of([r.prefilter for r in ready], prefilter_threshold) if prefilter is not None else None
            part = self._score_chunk(ready, [prompt_list[i] for i in idx], [ref_list[i] for i in idx],
                                     [lq_list[i] for i in idx], plan, pre)
            if keep_faces:
                part.face_info = [r.info for r in ready]
            yield part

    def _experts(self, dims: Sequence[str]) -> dict[str, str]:
        """Which expert answers each dimension: itself, or with ``routing="router"`` the router's pick for its
        evaluation prompt."""
        if self.config.routing != "router" or not dims:
            return {}
        picked = self.route_questions([EVAL_PROMPTS[d].format(prompt="") for d in dims])
        return {d: a.dim for d, a in zip(dims, picked)}

    def _score_chunk(self, ready: list[_Ready], prompts: list[Any], refs: list[Any], lqs: list[Any],
                     plan: _Plan, pre: PrefilterPass | None = None) -> ScoreResult:
        n = len(ready)
        scores = torch.full((n, len(DIMENSIONS)), float("nan"), dtype=torch.float32)
        answers = [[{"question": a.text, "dimension": a.dim, "probability": a.probability, "score": None}
                    for a in plan.asked] for _ in range(n)]
        warnings: list[list[str]] = [[] for _ in range(n)]
        missing: list[dict[str, str]] = [{} for _ in range(n)]
        infos = [r.info for r in ready]
        ok = [i for i in range(n) if ready[i].image is not None]
        for i in ok:
            if infos[i] is not None and not infos[i].has_face:
                warnings[i].append(NO_FACE_IN_IMAGE)
        if pre is not None:  # the pre-filter rule (scoring/prefilter.py): faces under the threshold skip the LMM
            for i in ok:
                if pre.skipped[i]:
                    warnings[i].append(pre.note(i))
                    missing[i].update(dict.fromkeys(plan.dims, PREFILTERED))
            ok = [i for i in ok if not pre.skipped[i]]
        with self._lock, torch.inference_mode():
            questions = plan_questions(plan.dims, prompts, refs, infos, indices=ok,
                                       tokenizer=self.model.processor.tokenizer,
                                       has_face_model=self.face_encoder is not None, trained=self.model.trained,
                                       references=plan.references, warnings=warnings, experts=plan.experts,
                                       asked=plan.asked, lqs=lqs, lq_images=plan.lq_images, missing=missing)
            values = [q.value for q in questions]
            asked = [k for k, q in enumerate(questions) if q.value is None]
            if asked:
                for k, v in zip(asked, self._ask(ready, [questions[k] for k in asked], plan.prepared)):
                    values[k] = v
            for q, v in zip(questions, values):
                if q.answer is not None:
                    answers[q.index][q.answer]["score"] = v
                else:
                    scores[q.index, q.column] = v
        faces = [None if r.info is None or r.image is None else int(r.info.num_faces) for r in ready]
        warnings = [face_notes(w) for w in warnings]
        errors = [r.error for r in ready]
        return ScoreResult(scores, [r.name for r in ready], faces, errors, warnings, plan.dims,
                           answers if plan.asked else [], complete_missing(scores, missing, errors),
                           [pre.record_value(i) for i in range(n)] if pre is not None else [])

    def _ask(self, ready: list[_Ready], questions: list[Question], ref_prepared: dict[int, Any]) -> list[float]:
        """The LMM's scores of ``questions`` (one batched pass over all their rows)."""
        rows = [self._row(ready[q.index], q) for q in questions]
        prepared = dict(ref_prepared)
        prepared.update({id(r.image): r.pixels for r in ready if r.pixels is not None})
        out = self.model.score_rows(rows, prepared, share_vision=self.share_vision, bucket=self.bucket,
                                    max_batch_tokens=self.max_batch_tokens)
        for row in rows:  # references and low-quality inputs recur across chunks: keep their processor outputs
            for im in (row.ref, row.lq):
                if im is not None and id(im) in prepared:
                    ref_prepared[id(im)] = prepared[id(im)]
        return self.model.scores(out).float().cpu().tolist()

    @staticmethod
    def _row(ready: _Ready, q: Question) -> Row:
        emb = ready.info.embedding if ready.info is not None else None
        return Row(ready.image, q.dim, prompt=q.prompt, ref=q.ref.image if q.ref else None, face=emb,
                   ref_face=q.ref.embedding if q.ref else None, question=q.text, lq=q.lq.image if q.lq else None)


@dataclass
class _Plan:
    """What a scoring run asks of every image, and what it keeps from chunk to chunk."""

    dims: tuple[str, ...]
    asked: list[Asked]
    experts: dict[str, str]
    references: References  # each reference loaded and analysed once per run
    lq_images: References  # each low-quality input loaded once per run
    prepared: dict[int, Any] = field(default_factory=dict)  # id(reference or lq image) -> PreparedImage


def _load_face_encoder(config: FEvalConfig, folder: Path | None, device: str, face_root: str | Path | None) -> Any:
    from ..faces.registry import get_face_encoder

    root: str | Path | None = face_root
    if root is None and config.face.root:
        r = Path(config.face.root)
        root = r if r.is_absolute() or folder is None else folder / r
    try:
        return get_face_encoder(config.face.pack, root=root, device=device,  # shared with FIQA, pre-filter, nodes
                                det_size=(config.face.det_size, config.face.det_size),
                                det_thresh=config.face.det_thresh)
    except FaceModelError:
        if config.mode == "trained":
            raise
        logger.warning("no insightface pack %r found: zero-shot identity scores will be NaN and face counts null",
                       config.face.pack)
        return None
