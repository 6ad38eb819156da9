"""Training and evaluating a video checkpoint: FVQ-Rater's two stages on the image engine.

Stage 1 trains on rating words (cross-entropy of the MOS band's word, :func:`~feval_core.train.steps.level_targets`),
stage 2 on MOS regression (smooth-L1 of the score head), as the image trainer's ``two_stage`` schedule does. The
backbone, the temporal encoder, the segmenter and the face pack stay frozen; the LoRA expert, the facial,
temporal and portrait projectors and the head are trained. The frozen encoders' features are computed once per clip.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..evaluate.metrics import correlation_table
from ..model.config import DEFAULT_LORA_TARGETS, FaceEncoderConfig, FEvalConfig
from ..train.steps import level_targets
from .checkpoint import build_video_model, load_encoders, save_video_checkpoint
from .config import BRANCHES, VideoConfig
from .decode import load_clip
from .features import FeatureExtractor, detect_faces
from .model import VideoFeatures, VideoLMM
from .sources import VideoInputError, VideoSource

logger = logging.getLogger(__name__)


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
    lr: float = 2e-4
    head_lr: float = 1e-3
    stage1_fraction: float = field(default=0.3, metadata={"help": "share of the steps on rating words (stage 1)"})
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.branches, self.portrait_labels = tuple(self.branches), tuple(self.portrait_labels)
        if "portrait" in self.branches and not self.portrait_model:
            raise ConfigError("the portrait branch needs portrait_model (a Segformer-family folder or hub id), or "
                              "leave 'portrait' out of branches")
        if not 0.0 <= self.stage1_fraction < 1.0 or self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("need epochs >= 1, batch_size >= 1 and stage1_fraction in [0, 1)")

    def video_config(self) -> VideoConfig:
        return VideoConfig(temporal_model=self.temporal_model, portrait_model=self.portrait_model or "portrait",
                           portrait_labels=self.portrait_labels, branches=self.branches,
                           num_key_frames=self.num_key_frames, num_clip_frames=self.num_clip_frames,
                           temporal_tokens=self.temporal_tokens, portrait_size=self.portrait_size,
                           frame_side=self.frame_side)

    def feval_config(self) -> FEvalConfig:
        return FEvalConfig(base_model=self.base, mode="trained", score_mode="regression", dims=("quality",),
                           num_face_tokens=self.num_face_tokens, lora_rank=self.lora_rank, lora_alpha=self.lora_alpha,
                           lora_target_modules=self.lora_targets,
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


def extract(extractor: FeatureExtractor, sources: Sequence[VideoSource], batch: int = 16
            ) -> tuple[list[VideoFeatures | None], dict[str, str]]:
    """Features of every source (None and an error for one that cannot be read: it is left out, not fatal)."""
    feats: list[VideoFeatures | None] = [None] * len(sources)
    errors: dict[str, str] = {}
    for start in range(0, len(sources), batch):
        ok, clips, tracks = [], [], []
        for i in range(start, min(start + batch, len(sources))):
            try:
                clip = load_clip(sources[i], extractor.sampling)
            except VideoInputError as exc:
                errors[sources[i].name] = str(exc)
                continue
            face = extractor.face_encoder if extractor.vconfig.uses("face") else None
            ok.append(i), clips.append(clip), tracks.append(detect_faces(clip, face))
        for i, f in zip(ok, extractor(clips, tracks) if clips else []):
            feats[i] = f
    return feats, errors


def predict(model: VideoLMM, feats: Sequence[VideoFeatures], batch: int = 16) -> np.ndarray:
    out = []
    with torch.no_grad():
        for s in range(0, len(feats), batch):
            out.append(model.scores(model.score_clips(feats[s:s + batch])).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def train_video(cfg: VideoTrainConfig, train: Sequence[tuple[VideoSource, float]],
                val: Sequence[tuple[VideoSource, float]] = (), *, out: str | Path | None = None,
                face_encoder: Any = None) -> VideoTrainResult:
    """Train on (source, MOS) pairs; validate on ``val``; save to ``out`` when given."""
    t0 = time.time()
    vcfg = cfg.video_config()
    temporal, portrait = load_encoders(vcfg, None, cfg.device)
    extractor = FeatureExtractor(vcfg, temporal, portrait, face_encoder)
    tr_feats, skipped = extract(extractor, [s for s, _ in train])
    va_feats, va_skipped = extract(extractor, [s for s, _ in val])
    skipped.update(va_skipped)
    tr = [(f, m) for f, (_, m) in zip(tr_feats, train) if f is not None]
    va = [(f, m) for f, (_, m) in zip(va_feats, val) if f is not None]
    if not tr:
        first = next(iter(skipped.values()), "")
        raise ConfigError(f"no training video could be read ({len(skipped)} errors, e.g. {first})")
    torch.manual_seed(cfg.seed)
    model = build_video_model(cfg.feval_config(), vcfg, temporal, portrait, device=cfg.device)
    history = _loop(model, tr, cfg)
    metrics = {}
    if va:
        pred = predict(model, [f for f, _ in va])
        metrics = correlation_table(pred, np.asarray([m for _, m in va]))
    if out is not None:
        save_video_checkpoint(model, out)
        (Path(out) / "video_train_config.json").write_text(_json(asdict(cfg)))
    logger.info("video training: %d clips, %d skipped, val %s, %.0f s", len(tr), len(skipped), metrics,
                time.time() - t0)
    return VideoTrainResult(model, extractor, metrics, skipped, time.time() - t0, history)


def _loop(model: VideoLMM, data: list[tuple[VideoFeatures, float]], cfg: VideoTrainConfig) -> list[dict[str, float]]:
    named = list(model.trainable_parameters())
    head = [p for n, p in named if n.startswith("heads.head.")]
    rest = [p for n, p in named if not n.startswith("heads.head.")]
    opt = torch.optim.AdamW([{"params": rest, "lr": cfg.lr, "base": cfg.lr},
                             {"params": head, "lr": cfg.head_lr, "base": cfg.head_lr}], weight_decay=0.01)
    rng = np.random.default_rng(cfg.seed)
    per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = per_epoch * cfg.epochs
    stage1 = int(round(cfg.stage1_fraction * total))
    history, step = [], 0
    for _ in range(cfg.epochs):
        order = rng.permutation(len(data))
        for s in range(0, len(data), cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            out = model.score_clips([data[i][0] for i in idx])
            mos = torch.tensor([data[i][1] for i in idx], dtype=torch.float32, device=out.level_logits.device)
            if step < stage1:  # stage 1: rating words
                loss = nn.functional.cross_entropy(out.level_logits, level_targets(mos))
            else:  # stage 2: MOS regression
                loss = nn.functional.smooth_l1_loss(out.reg_score / 100.0, mos / 100.0, beta=0.05)
            start, length = (0, stage1) if step < stage1 else (stage1, total - stage1)
            factor = 0.5 * (1 + math.cos(math.pi * (step - start) / max(1, length)))
            for g in opt.param_groups:
                g["lr"] = g["base"] * factor
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append({"step": step, "loss": float(loss.detach()), "stage": 1 if step < stage1 else 2})
            step += 1
    return history


def _json(d: dict[str, Any]) -> str:
    import json

    return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}, indent=2) + "\n"
