"""The settings of a training run (:class:`TrainConfig`, saved as ``train_config.json``) and their choices.

Light on purpose (no torch): ``feval train --help`` builds its options from it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..model.config import (
    DEFAULT_LORA_TARGETS,
    DEFAULT_VISION_LORA_TARGETS,
    VISION_EXPERTS,
    read_json_config,
    read_json_object,
    write_json_config,
)

SCHEDULES: tuple[str, ...] = ("two_stage", "joint", "levels", "regression")
DEFAULT_SCHEDULE = "levels"  # best and steadiest held-out SRCC on both tasks (README: which schedule)
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
LOSSES: tuple[str, ...] = ("smooth_l1", "l1", "mse")
LR_SCHEDULES: tuple[str, ...] = ("cosine", "linear", "constant")
SPLIT_BY: tuple[str, ...] = ("auto", "model", "image", "none")
DEFAULT_VISION_EXPERTS = "shared"  # chosen by measurement: README "Which vision experts"
REFERENCE_LR = 1e-4
REFERENCE_WIDTH = 2048
TRAIN_CONFIG_NAME = "train_config.json"
# Fields that may change between a run and its resumption without changing what is trained.
RESUME_FREE = frozenset({"resume", "stop_after", "num_workers", "log_every", "eval_every", "eval_at_start",
                         "save_every", "out", "progress", "probe"})


@dataclass
class TrainConfig:
    """Everything a training run needs; saved as ``train_config.json`` in the run folder."""

    manifest: str = field(metadata={"help": "training manifest (JSON Lines, see feval_core.data.manifest)"})
    base: str = field(metadata={"help": "backbone: hub id (e.g. Qwen/Qwen2.5-VL-7B-Instruct) or local folder"})
    out: str = field(metadata={"help": "run folder; ends up holding the trained checkpoint"})
    val_manifest: str | None = field(default=None, metadata={
        "help": "validation manifest; without it, val_fraction of the training manifest is held out"})
    val_fraction: float = field(default=0.1, metadata={"help": "held-out fraction when no val_manifest (0: none)"})
    split_seed: int = field(default=0, metadata={"help": "seed of the train/val split"})
    split_by: str = field(default="auto", metadata={
        "help": "keep groups whole in the split: 'model' (no generator in both), 'image', 'none'; 'auto' = "
                "model when every row names one, else image"})
    dims: tuple[str, ...] | None = field(default=None, metadata={
        "help": "dimensions to train (default: every dimension with a MOS in the training manifest)"})
    schedule: str = field(default=DEFAULT_SCHEDULE, metadata={"help": f"one of {SCHEDULES}"})
    stage1_fraction: float = field(default=0.5, metadata={
        "help": "two_stage: fraction of the optimizer steps spent on rating words before regression"})
    epochs: int = field(default=3, metadata={"help": "passes over the training rows"})
    max_steps: int | None = field(default=None, metadata={
        "help": "total optimizer steps (overrides epochs; the learning-rate schedule spans them)"})
    stop_after: int | None = field(default=None, metadata={
        "help": "stop (saving resumable state) after this many optimizer steps; --resume continues"})
    batch_size: int = field(default=8, metadata={"help": "(image, dimension) rows per process per micro-step"})
    grad_accum: int = field(default=1, metadata={"help": "micro-steps per optimizer step"})
    lr: float | None = field(default=None, metadata={
        "help": "learning rate of the LoRA experts and the facial and vision projectors; default: "
                f"{REFERENCE_LR:g} x {REFERENCE_WIDTH} / (LLM hidden size) — {REFERENCE_LR:g} for a "
                f"{REFERENCE_WIDTH}-wide "
                "LLM (Qwen2.5-VL-3B), 5.7e-5 at 7B, 3.2e-3 for the 64-wide test models (1/width, as muP scales Adam)"})
    head_lr: float = field(default=1e-3, metadata={"help": "learning rate of the score head"})
    router_lr: float = field(default=1e-2, metadata={
        "help": "learning rate of the router (a score per question token: sparse, it needs larger steps)"})
    weight_decay: float = 0.0
    warmup_ratio: float = field(default=0.05, metadata={"help": "warm-up fraction of each stage"})
    lr_schedule: str = field(default="cosine", metadata={"help": f"one of {LR_SCHEDULES}"})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "gradient clipping (0 or None: off)"})
    loss: str = field(default="smooth_l1", metadata={"help": f"regression loss, one of {LOSSES} (on MOS/100)"})
    level_weight: float = field(default=0.25, metadata={"help": "weight of the rating-word cross-entropy"})
    regression_weight: float = field(default=1.0, metadata={"help": "weight of the regression loss (MOS/100 units)"})
    router_weight: float = 0.1
    precision: str = field(default="fp32", metadata={"help": "fp32, or bf16 (backbone in bf16, mixed precision)"})
    gradient_checkpointing: bool = False
    num_face_tokens: int = 4
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_targets: str = field(default=DEFAULT_LORA_TARGETS, metadata={
        "help": "regex of the LLM modules the dimension experts attach to"})
    vision_experts: str = field(default=DEFAULT_VISION_EXPERTS, metadata={
        "help": f"LoRA experts in the vision tower, one of {VISION_EXPERTS} (see README: which vision experts)"})
    vision_lora_targets: str = field(default=DEFAULT_VISION_LORA_TARGETS, metadata={
        "help": "regex of the vision-tower modules the vision experts attach to"})
    train_vision_projector: bool = field(default=True, metadata={
        "help": "train the backbone's vision projector (Qwen's merger, LLaVA/InternVL's multi_modal_projector)"})
    max_image_pixels: int | None = 448 * 448
    face_pack: str = "buffalo_l"
    face_root: str | None = field(default=None, metadata={"help": "insightface root holding models/<pack>"})
    det_size: int = 640
    det_thresh: float = 0.5
    copy_base: bool = field(default=False, metadata={"help": "copy a local backbone folder into the checkpoint"})
    copy_face_pack: bool = field(default=False, metadata={"help": "copy the face pack into the checkpoint"})
    eval_every: int = field(default=0, metadata={"help": "validate every N optimizer steps (0: each epoch end)"})
    eval_at_start: bool = field(default=True, metadata={"help": "validate the untrained model first (baseline)"})
    save_every: int = field(default=200, metadata={"help": "write resumable state every N optimizer steps"})
    log_every: int = 10
    seed: int = 0
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers decoding images"})
    resume: bool = field(default=False, metadata={"help": "continue from <out>/state"})
    probe: bool = field(default=False, metadata={
        "help": "before training, fit linear probes on the frozen model's features (probe.json): the SRCC training "
                "should at least reach"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar on the main process"})
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.dims is not None:
            from ..dimensions import parse_dims

            try:
                self.dims = parse_dims(self.dims if isinstance(self.dims, str) else list(self.dims))
            except ValueError as exc:
                raise ConfigError(f"dims: {exc}") from exc
        choices = {"schedule": SCHEDULES, "precision": PRECISIONS, "loss": LOSSES, "lr_schedule": LR_SCHEDULES,
                   "split_by": SPLIT_BY, "vision_experts": VISION_EXPERTS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name in ("batch_size", "grad_accum", "epochs", "num_face_tokens", "lora_rank", "lora_alpha",
                     "save_every", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name} must be a positive integer; got {v!r}")
        for name in ("max_steps", "stop_after"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ConfigError(f"{name} must be a positive integer or None; got {v!r}")
        if self.eval_every < 0 or self.num_workers < 0:
            raise ConfigError("eval_every and num_workers must be >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1); got {self.val_fraction}")
        if not 0.0 < self.stage1_fraction < 1.0:
            raise ConfigError(f"stage1_fraction must be in (0, 1); got {self.stage1_fraction}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio must be in [0, 1); got {self.warmup_ratio}")
        for name in ("lr", "level_weight", "regression_weight", "router_weight", "weight_decay"):
            if getattr(self, name) is None and name == "lr":
                continue
            v = float(getattr(self, name))
            if not math.isfinite(v) or v < 0 or (name == "lr" and v == 0):
                raise ConfigError(f"{name} must be a finite number >= 0 (lr > 0); got {v}")
        for name in ("head_lr", "router_lr"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ConfigError(f"{name} must be > 0; got {getattr(self, name)}")
        if self.copy_base and not Path(self.base).expanduser().is_dir():
            raise ConfigError(f"copy_base needs a local backbone folder; {self.base!r} is not one")

    # -- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.dims is not None:
            d["dims"] = list(self.dims)
        return d

    def save(self, folder: str | Path) -> Path:
        return write_json_config(Path(folder) / TRAIN_CONFIG_NAME, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a run's ``train_config.json`` (a file or the run folder); unknown keys and bad values refused."""
        return read_json_config(cls, path, what="a feval train config", name=TRAIN_CONFIG_NAME,
                                missing="; `feval train` writes it in the run folder",
                                fix="; it is written by `feval train`, do not edit it by hand")

    def learning_rate(self, hidden_size: int) -> float:
        """``lr``, or the default for an LLM of ``hidden_size`` (see the field's help)."""
        return float(self.lr) if self.lr is not None else REFERENCE_LR * REFERENCE_WIDTH / hidden_size

    @property
    def stages(self) -> tuple[str, ...]:
        """The loss of each stage, in order."""
        return ("levels", "regression") if self.schedule == "two_stage" else (self.schedule,)

    @property
    def score_mode(self) -> str:
        """How the trained checkpoint reads its score out."""
        return score_mode_for(self.schedule)


def score_mode_for(schedule: str) -> str:
    """The readout a model trained with ``schedule`` scores with: rating words after ``levels``, else the head."""
    return "levels" if schedule == "levels" else "regression"


def check_resume(cfg: TrainConfig, out: Path) -> None:
    """Refuse to resume the run in ``out`` with settings that change what is trained."""
    saved = out / TRAIN_CONFIG_NAME
    if not saved.is_file():
        raise ConfigError(f"--resume: {out} has no {TRAIN_CONFIG_NAME}; start a new run without --resume")
    if "vision_experts" not in read_json_object(saved, "a feval train config"):
        raise ConfigError(f"--resume: the run in {out} was started by a feval without vision experts and a trained "
                          "vision projector, whose state this one cannot continue; finish it with the feval that "
                          "started it, or start a new run in another folder")
    old = TrainConfig.load(saved).to_dict()
    new = cfg.to_dict()
    diff = sorted(k for k in new if k not in RESUME_FREE and old.get(k) != new.get(k))
    if diff:
        raise ConfigError(f"--resume: settings differ from the run in {out}: "
                          + ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
                          + "; resume with the same settings, or start a new run in another folder")
