"""Training and evaluating a video checkpoint: FVQ-Rater's two stages on the image engine.

The schedules and losses are the image trainer's (:mod:`feval_core.train`): ``levels`` (default: cross-entropy of
the MOS band's rating word after the answer prefix), ``regression`` (smooth-L1 of the score head), ``two_stage``
(FVQ-Rater: levels, then regression) or ``joint``; the learning rate defaults to ``1.5e-5 x 2048 / (LLM width)``
(:data:`REFERENCE_VIDEO_LR`, the image rule at 0.15 of its rate), with warm-up, a cosine decay per stage and
gradient clipping. The backbone's vision tower (unless ``vision_experts`` puts LoRA in it), the temporal encoder,
the segmenter and the face pack stay frozen; the LoRA expert, the backbone's vision projector, the facial, temporal
and portrait projectors and the head are trained. The frozen encoders' features are
computed once per clip, written to disk and read back per batch; ``accelerate launch`` runs it data parallel.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..evaluate.metrics import correlation_table
from ..model.config import (DEFAULT_LORA_TARGETS, VISION_EXPERTS, FaceEncoderConfig, FEvalConfig, read_json_object,
                            write_json_config)
from ..train.config import LR_SCHEDULES, REFERENCE_LR, REFERENCE_WIDTH, RESUME_FREE, SCHEDULES, score_mode_for
from ..train.loop import make_accelerator
from .cache import FeatureCache
from .checkpoint import build_video_model, load_encoders, save_video_checkpoint
from .config import BRANCHES, VideoConfig
from .decode import load_clip
from .features import FeatureExtractor, detect_faces
from .loop import run_loop
from .model import VideoFeatures, VideoLMM
from .sources import VideoInputError, VideoSource
from .store import FeatureStore, StoredClips, scratch_folder, store_clips

logger = logging.getLogger(__name__)

REFERENCE_VIDEO_LR = 1.5e-5
"""Default learning rate of a ``REFERENCE_WIDTH``-wide LLM for video training, scaled by width like the image
trainer's ``REFERENCE_LR`` (1e-4): the image rate made video training unstable across seeds on the synthetic task
(held-out SRCC 0.65-0.84 over 4 seeds; 4.8e-4 at width 64 with 20 epochs: docs/video.md)."""


@dataclass
class VideoTrainConfig:
    """``feval video train``: one run."""

    base: str = field(metadata={"help": "backbone (AutoModelForImageTextToText folder or hub id)"})
    temporal_model: str = field(metadata={"help": "VideoMAE-family folder or hub id"})
    portrait_model: str = field(default="", metadata={"help": "Segformer-family folder or hub id ('' with no "
                                                                "portrait branch)"})
    portrait_labels: tuple[str, ...] = ("person",)
    face_pack: str = "buffalo_l"
    face_root: str | None = None
    det_size: int = 640
    branches: tuple[str, ...] = BRANCHES
    num_key_frames: int = 8
    num_clip_frames: int = 16
    temporal_tokens: int = 4
    portrait_size: int = 128
    frame_side: int = 448
    num_face_tokens: int = 1
    max_image_pixels: int = 448 * 448
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_targets: str = DEFAULT_LORA_TARGETS
    epochs: int = 3
    batch_size: int = 8
    schedule: str = field(default="levels", metadata={"help": f"one of {SCHEDULES} (see `feval train`)"})
    lr: float | None = field(default=None, metadata={
        "help": f"learning rate of the expert and projectors; default {REFERENCE_VIDEO_LR:g} x {REFERENCE_WIDTH} / "
                f"(LLM hidden size): `feval train`'s rule for images at {REFERENCE_VIDEO_LR / REFERENCE_LR:g} of its "
                "rate, chosen by a seed sweep (docs/video.md)"})
    head_lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    lr_schedule: str = field(default="cosine", metadata={"help": f"one of {LR_SCHEDULES}"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0: off)"})
    level_weight: float = field(default=0.25, metadata={"help": "joint: weight of the rating-word loss"})
    stage1_fraction: float = field(default=0.5, metadata={"help": "two_stage: share of the steps on rating words"})
    train_vision_projector: bool = field(default=True, metadata={"help": "train the backbone's vision projector"})
    vision_experts: str = field(default="none", metadata={
        "help": f"LoRA in the vision tower: one of {VISION_EXPERTS} (the video has one expert, so shared = "
                "per_dimension)"})
    seed: int = 0
    device: str = "cpu"
    save_every: int = field(default=50, metadata={"help": "write resumable state every N optimizer steps (and at "
                                                          "each epoch's end)"})
    stop_after: int | None = field(default=None, metadata={
        "help": "stop (saving resumable state) after this many optimizer steps; --resume continues"})
    resume: bool = field(default=False, metadata={"help": "continue the run in --out from its saved state"})
    feature_cache: bool = field(default=True, metadata={
        "help": "keep the frozen encoders' features of each clip in <out>/feature_cache (reruns skip decoding)"})

    def __post_init__(self) -> None:
        self.branches, self.portrait_labels = tuple(self.branches), tuple(self.portrait_labels)
        if "portrait" in self.branches and not self.portrait_model:
            raise ConfigError("the portrait branch needs portrait_model (a Segformer-family folder or hub id), or "
                              "leave 'portrait' out of branches")
        if not 0.0 <= self.stage1_fraction < 1.0 or self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("need epochs >= 1, batch_size >= 1 and stage1_fraction in [0, 1)")
        if self.schedule not in SCHEDULES or self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES} and lr_schedule one of {LR_SCHEDULES}; got "
                              f"{self.schedule!r}, {self.lr_schedule!r}")
        if self.vision_experts not in VISION_EXPERTS:
            raise ConfigError(f"vision_experts must be one of {VISION_EXPERTS}; got {self.vision_experts!r}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be > 0 (or left out for the width-scaled default); got {self.lr}")

    def learning_rate(self, hidden_size: int) -> float:
        return float(self.lr) if self.lr is not None else REFERENCE_VIDEO_LR * REFERENCE_WIDTH / hidden_size

    def stage_bounds(self, total: int) -> list[int]:
        """Last step (exclusive) of each stage: two for ``two_stage``, else one."""
        if self.schedule != "two_stage":
            return [total]
        return [int(round(self.stage1_fraction * total)), total]

    def stage_weights(self, stage: int) -> dict[str, float]:
        name = ("levels", "regression")[stage] if self.schedule == "two_stage" else self.schedule
        return {"levels": {"levels": 1.0}, "regression": {"regression": 1.0},
                "joint": {"levels": self.level_weight, "regression": 1.0}}[name]

    def video_config(self) -> VideoConfig:
        return VideoConfig(temporal_model=self.temporal_model, portrait_model=self.portrait_model or "portrait",
                           portrait_labels=self.portrait_labels, branches=self.branches,
                           num_key_frames=self.num_key_frames, num_clip_frames=self.num_clip_frames,
                           temporal_tokens=self.temporal_tokens, portrait_size=self.portrait_size,
                           frame_side=self.frame_side)

    def feval_config(self) -> FEvalConfig:
        return FEvalConfig(base_model=self.base, mode="trained", score_mode=score_mode_for(self.schedule),
                           dims=("quality",), vision_projector="trained" if self.train_vision_projector else "frozen",
                           num_face_tokens=self.num_face_tokens, lora_rank=self.lora_rank, lora_alpha=self.lora_alpha,
                           lora_target_modules=self.lora_targets, vision_experts=self.vision_experts,
                           max_image_pixels=self.max_image_pixels,
                           face=FaceEncoderConfig(pack=self.face_pack, root=self.face_root, det_size=self.det_size))


@dataclass
class VideoTrainResult:
    model: VideoLMM
    extractor: FeatureExtractor
    val: dict[str, float]
    skipped: dict[str, str]
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    val_predictions: np.ndarray | None = None  # scores of the readable validation clips, in their order
    steps: int = 0
    finished: bool = True  # False: stopped by stop_after; resume with resume=True
    cache: dict[str, int] = field(default_factory=dict)  # feature cache: clips found ("hits") and written ("stored")


VIDEO_TRAIN_CONFIG_NAME = "video_train_config.json"
STATE_FREE = RESUME_FREE | {"device", "feature_cache"}
"""Fields that may change when a run is resumed (the image trainer's, the device and the cache switch)."""


def extract(extractor: FeatureExtractor, sources: Sequence[VideoSource], batch: int = 16,
            cache: FeatureCache | None = None) -> tuple[list[VideoFeatures | None], dict[str, str]]:
    """Features of every source (None and an error for one that cannot be read: it is left out, not fatal). With a
    ``cache``, clips found there are not decoded, and the others are stored."""
    feats: list[VideoFeatures | None] = [None] * len(sources)
    errors: dict[str, str] = {}
    for start in range(0, len(sources), batch):
        ok, clips, tracks = [], [], []
        for i in range(start, min(start + batch, len(sources))):
            feats[i] = cache.get(sources[i]) if cache is not None else None
            if feats[i] is not None:
                continue
            try:
                clip = load_clip(sources[i], extractor.sampling)
            except VideoInputError as exc:
                errors[sources[i].name] = str(exc)
                continue
            face = extractor.face_encoder if extractor.vconfig.uses("face") else None
            ok.append(i), clips.append(clip), tracks.append(detect_faces(clip, face))
        for i, f in zip(ok, extractor(clips, tracks) if clips else []):
            feats[i] = f
            if cache is not None:
                cache.put(sources[i], f)
    return feats, errors


def predict(model: VideoLMM, feats: Sequence[VideoFeatures], batch: int = 16) -> np.ndarray:
    out = []
    with torch.no_grad():
        for s in range(0, len(feats), batch):
            out.append(model.scores(model.score_clips(feats[s:s + batch])).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def check_run(cfg: VideoTrainConfig, out: str | Path | None) -> None:
    """The run options, and the run folder against them: a new run does not write over a run's state, and a resumed
    one exists and has the settings it started with."""
    from ..train.state import STATE_DIR, STATE_FILE

    if not isinstance(cfg.save_every, int) or cfg.save_every < 1:
        raise ConfigError(f"save_every must be a positive integer; got {cfg.save_every!r}")
    if cfg.stop_after is not None and (not isinstance(cfg.stop_after, int) or cfg.stop_after < 1):
        raise ConfigError(f"stop_after must be a positive integer or None; got {cfg.stop_after!r}")
    if out is None:
        if cfg.resume or cfg.stop_after:
            raise ConfigError("resume and stop_after need a run folder (out=...) to keep the state in")
        return
    run = Path(out).expanduser()
    has_state = (run / STATE_DIR / STATE_FILE).is_file()
    if not cfg.resume:
        if has_state:
            raise ConfigError(f"{run} holds an unfinished or finished video run; pass --resume to continue it, or "
                              "choose another --out")
        return
    saved = run / VIDEO_TRAIN_CONFIG_NAME
    if not has_state or not saved.is_file():
        raise ConfigError(f"--resume: no saved video training state in {run}; start a new run without --resume")
    old = read_json_object(saved, "a video training config")
    new = _plain(cfg)
    defaults = _plain_defaults()  # a setting added since the run was saved had its default then
    diff = sorted(k for k in new if k not in STATE_FREE and old.get(k, defaults.get(k)) != new[k])
    if diff:
        raise ConfigError(f"--resume: settings differ from the run in {run}: "
                          + ", ".join(f"{k} {old.get(k)!r} -> {new[k]!r}" for k in diff)
                          + "; resume with the same settings, or start a new run in another folder")


def train_video(cfg: VideoTrainConfig, train: Sequence[tuple[VideoSource, float]],
                val: Sequence[tuple[VideoSource, float]] = (), *, out: str | Path | None = None,
                face_encoder: Any = None) -> VideoTrainResult:
    """Train on (source, MOS) pairs; validate on ``val``; save to ``out`` when given. With ``out``, the run is
    resumable (state in ``out/state``) and the frozen features are cached in ``out/feature_cache``. Every clip's
    features are written to disk first and read back per batch (:mod:`~feval_core.video.store`), so memory does not
    grow with the number of clips. Under ``accelerate launch`` the processes share the clips and average gradients;
    the main process writes the state and the checkpoint."""
    t0 = time.time()
    acc = make_accelerator(cpu=str(cfg.device).startswith("cpu") or not torch.cuda.is_available())
    device = process_device(cfg.device)
    check_run(cfg, out)
    acc.wait_for_everyone()  # every process has checked the folder before the main one writes to it
    run = Path(out).expanduser() if out is not None else None
    if run is not None and acc.is_main_process:
        run.mkdir(parents=True, exist_ok=True)
        write_json_config(run / VIDEO_TRAIN_CONFIG_NAME, _plain(cfg))
    vcfg = cfg.video_config()
    temporal, portrait = load_encoders(vcfg, None, device)
    extractor = FeatureExtractor(vcfg, temporal, portrait, face_encoder)
    cache = None
    if run is not None and cfg.feature_cache:
        face = {"pack": cfg.face_pack, "root": cfg.face_root, "det_size": cfg.det_size} if vcfg.uses("face") else None
        cache = FeatureCache.for_run(run, vcfg, face)
    store = FeatureStore(scratch_folder(run, acc), cache)
    try:
        tr, skipped = store_clips(store, extractor, train, acc)
        va, va_skipped = store_clips(store, extractor, val, acc, offset=len(train))
        skipped.update(va_skipped)
        if not len(tr):
            first = next(iter(skipped.values()), "")
            raise ConfigError(f"no training video could be read ({len(skipped)} errors, e.g. {first})")
        torch.manual_seed(cfg.seed)
        model = build_video_model(cfg.feval_config(), vcfg, temporal, portrait, device=device)
        loop = run_loop(model, tr, cfg, run, acc)
        metrics, pred = {}, None
        if len(va) and loop.finished:
            pred = predict_stored(model, va, acc)
            metrics = correlation_table(pred, np.asarray(va.mos))
        if run is not None and loop.finished and acc.is_main_process:
            save_video_checkpoint(model, run)
        stats = _cache_stats(cache, acc)
        acc.wait_for_everyone()
    finally:
        if acc.is_main_process:
            shutil.rmtree(store.scratch, ignore_errors=True)
    logger.info("video training: %d clips, %d skipped, feature cache %s, %d of %d steps on %d process(es), val %s, "
                "%.0f s", len(tr), len(skipped), stats or "off", loop.steps, loop.total, acc.num_processes, metrics,
                time.time() - t0)
    return VideoTrainResult(model, extractor, metrics, skipped, time.time() - t0, loop.history, pred, loop.steps,
                            loop.finished, stats)


def process_device(device: str) -> str:
    """The device of this process: under ``accelerate launch`` a plain ``cuda`` is the process's own GPU
    (``cuda:LOCAL_RANK``, as accelerate places it); anything else as given."""
    import os

    local = os.environ.get("LOCAL_RANK")
    if local is None or int(os.environ.get("WORLD_SIZE", "1")) < 2 or not str(device).startswith("cuda"):
        return str(device)
    if str(device) != "cuda":
        raise ConfigError(f"--device {device} under accelerate launch would put every process on one GPU; pass "
                          "--device cuda (each process then uses its own GPU)")
    return f"cuda:{int(local)}"


def predict_stored(model: VideoLMM, clips: StoredClips, accelerator: Any, batch: int = 16) -> np.ndarray:
    """Scores of the stored clips, in their order: each process scores every N-th clip, read per batch."""
    from ..inputs.prefetch import chunked

    mine = list(range(accelerator.process_index, len(clips), accelerator.num_processes))
    scores: dict[int, float] = {}
    with torch.no_grad(), contextlib.closing(clips.batches(chunked(mine, batch))) as loaded:
        for idx, feats in zip(chunked(mine, batch), loaded):
            values = model.scores(model.score_clips(feats)).float().cpu().tolist()
            scores.update(zip(idx, values))
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        scores = {i: v for part in gather_object([scores]) for i, v in part.items()}
    return np.asarray([scores[i] for i in range(len(clips))], dtype=np.float64)


def _cache_stats(cache: FeatureCache | None, accelerator: Any) -> dict[str, int]:
    """The feature cache's hits and entries written, summed over the processes ({} without a cache)."""
    if cache is None:
        return {}
    counts = [(cache.hits, cache.stored)]
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        counts = gather_object(counts)
    return {"hits": sum(h for h, _ in counts), "stored": sum(s for _, s in counts)}


def _plain(cfg: VideoTrainConfig) -> dict[str, Any]:
    """The run's settings as JSON values (tuples as lists), as ``video_train_config.json`` holds them."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


def _plain_defaults() -> dict[str, Any]:
    return {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
            for f in fields(VideoTrainConfig) if f.default is not MISSING}
