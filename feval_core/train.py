"""Training F-Eval on opinion scores: data, losses, the accelerate loop, resumable state, the final checkpoint.

The backbone and the face encoder stay frozen; the facial projector, the LoRA experts (one per dimension),
the router and the score head are trained. Schedules:

* ``levels``: cross-entropy of the rating word (MOS binned into five equal bands over 0..100, best first)
  on the rating-word logits (Q-Align recipe); the checkpoint scores with rating words;
* ``regression``: smooth-L1 (or L1/MSE) of the regression head against the MOS;
* ``two_stage``: ``levels`` for the first ``stage1_fraction`` of the steps, then ``regression`` (the
  FVQ-Rater recipe);
* ``joint``: both losses at every step.

Every schedule also trains the router (cross-entropy of evaluation prompt -> dimension). The loop runs
unchanged on one CPU/GPU or under ``accelerate launch`` (data parallel). Resumable state lives in
``<out>/state/`` and holds safetensors and JSON only (feval never unpickles).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import DEFAULT_LORA_TARGETS, FaceEncoderConfig, FEvalConfig
from .dimensions import DIM_INDEX, DIMENSIONS, EVAL_PROMPTS, LEVEL_WORDS
from .errors import ConfigError, ManifestError
from .manifest import ManifestRow, read_manifest, write_manifest

logger = logging.getLogger(__name__)

SCHEDULES: tuple[str, ...] = ("two_stage", "joint", "levels", "regression")
DEFAULT_SCHEDULE = "two_stage"
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
LOSSES: tuple[str, ...] = ("smooth_l1", "l1", "mse")
LR_SCHEDULES: tuple[str, ...] = ("cosine", "linear", "constant")
SPLIT_BY: tuple[str, ...] = ("auto", "model", "image", "none")

TRAIN_CONFIG_NAME = "train_config.json"
LOG_NAME = "train_log.jsonl"
STATE_DIR = "state"
FACE_CACHE_NAME = "face_cache.safetensors"
SPLITS_DIR = "splits"
_STATE_FILE = "trainer_state.json"
_TRAINABLE_FILE = "trainable.safetensors"
_OPTIMIZER_FILE = "optimizer.safetensors"
# Fields that may change between a run and its resumption without changing what is trained.
_RESUME_FREE = frozenset({"resume", "stop_after", "num_workers", "log_every", "eval_every", "save_every",
                          "out", "progress"})


@dataclass
class TrainConfig:
    """Everything a training run needs; saved as ``train_config.json`` in the run folder."""

    manifest: str = field(metadata={"help": "training manifest (JSON Lines, see feval_core.manifest)"})
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
    lr: float = field(default=1e-4, metadata={"help": "learning rate of the LoRA experts and facial projector"})
    head_lr: float | None = field(default=None, metadata={"help": "learning rate of score head and router "
                                                                  "(default: 10 x lr)"})
    weight_decay: float = 0.0
    warmup_ratio: float = field(default=0.05, metadata={"help": "warm-up fraction of each stage"})
    lr_schedule: str = field(default="cosine", metadata={"help": f"one of {LR_SCHEDULES}"})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "gradient clipping (None: off)"})
    loss: str = field(default="smooth_l1", metadata={"help": f"regression loss, one of {LOSSES} (on MOS/100)"})
    level_weight: float = 1.0
    regression_weight: float = field(default=1.0, metadata={"help": "weight of the regression loss (MOS/100 units)"})
    router_weight: float = 0.1
    precision: str = field(default="fp32", metadata={"help": "fp32, or bf16 (backbone in bf16, mixed precision)"})
    gradient_checkpointing: bool = False
    num_face_tokens: int = 4
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_targets: str = DEFAULT_LORA_TARGETS
    max_image_pixels: int | None = 448 * 448
    face_pack: str = "buffalo_l"
    face_root: str | None = field(default=None, metadata={"help": "insightface root holding models/<pack>"})
    det_size: int = 640
    det_thresh: float = 0.5
    copy_base: bool = field(default=False, metadata={"help": "copy a local backbone folder into the checkpoint"})
    copy_face_pack: bool = field(default=False, metadata={"help": "copy the face pack into the checkpoint"})
    eval_every: int = field(default=0, metadata={"help": "validate every N optimizer steps (0: each epoch end)"})
    save_every: int = field(default=200, metadata={"help": "write resumable state every N optimizer steps"})
    log_every: int = 10
    seed: int = 0
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers decoding images"})
    resume: bool = field(default=False, metadata={"help": "continue from <out>/state"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar on the main process"})
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.dims is not None:
            from .dimensions import parse_dims

            try:
                self.dims = parse_dims(list(self.dims))
            except ValueError as exc:
                raise ConfigError(f"dims: {exc}") from exc
        choices = {"schedule": SCHEDULES, "precision": PRECISIONS, "loss": LOSSES, "lr_schedule": LR_SCHEDULES,
                   "split_by": SPLIT_BY}
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
            v = float(getattr(self, name))
            if not math.isfinite(v) or v < 0 or (name == "lr" and v == 0):
                raise ConfigError(f"{name} must be a finite number >= 0 (lr > 0); got {v}")
        if self.head_lr is not None and not (math.isfinite(self.head_lr) and self.head_lr > 0):
            raise ConfigError(f"head_lr must be > 0; got {self.head_lr}")
        if self.copy_base and not Path(self.base).expanduser().is_dir():
            raise ConfigError(f"copy_base needs a local backbone folder; {self.base!r} is not one")

    # -- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.dims is not None:
            d["dims"] = list(self.dims)
        return d

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / TRAIN_CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if path.is_dir():
            path = path / TRAIN_CONFIG_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read {path} ({exc}); it is written by `feval train` in the run folder") from exc
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{path}: unknown keys {unknown}")
        return cls(**data)

    @property
    def stages(self) -> tuple[str, ...]:
        """The loss of each stage, in order."""
        return ("levels", "regression") if self.schedule == "two_stage" else (self.schedule,)

    @property
    def score_mode(self) -> str:
        """How the trained checkpoint reads its score out."""
        return "levels" if self.schedule == "levels" else "regression"


# -- data -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    """One training question: an image on one dimension, with its MOS."""

    image: str
    dim: str
    mos: float
    task: str
    prompt: str | None = None
    ref: str | None = None


def expand_rows(rows: Sequence[ManifestRow], dims: Sequence[str] | None = None) -> list[Example]:
    """Each manifest row with ``k`` MOS (of the wanted ``dims``) becomes ``k`` examples.

    The reference of identity is ``ref``, or for restorations without one, the low-quality input ``lq``.
    """
    wanted = set(dims or DIMENSIONS)
    out: list[Example] = []
    for row in rows:
        for dim in DIMENSIONS:
            if dim not in row.mos or dim not in wanted:
                continue
            ref = row.ref if row.ref is not None else (row.lq if row.task == "restoration" else None)
            if dim == "identity" and ref is None:
                raise ManifestError(f"line {row.line} ({row.image}): identity MOS needs a 'ref' (or 'lq' for a "
                                    "restoration)")
            out.append(Example(str(row.image), dim, float(row.mos[dim]), row.task,
                               row.prompt if dim == "correspondence" else None,
                               str(ref) if dim == "identity" else None))
    return out


def level_targets(mos: torch.Tensor) -> torch.Tensor:
    """Index of the rating word of each MOS: five equal bands over 0..100, best word (``excellent``) first."""
    band = torch.div(100.0 - mos.float().clamp(0.0, 100.0), 100.0 / len(LEVEL_WORDS), rounding_mode="floor")
    return band.clamp(0, len(LEVEL_WORDS) - 1).long()


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
        st = p.stat()
        return hashlib.sha1(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()

    def missing(self, paths: Sequence[str]) -> list[str]:
        return [p for p in dict.fromkeys(paths) if self.key(p) not in self.entries]

    def fill(self, paths: Sequence[str], encoder: Any, *, progress: bool = True) -> int:
        """Embed the images not cached yet; returns how many were embedded."""
        from tqdm.auto import tqdm

        from .images import load_image

        todo = self.missing(paths)
        for p in tqdm(todo, desc="detecting faces", unit="img", disable=not progress or None):
            info = encoder.analyze(load_image(p))
            self.entries[self.key(p)] = None if info.embedding is None else np.asarray(info.embedding, np.float32)
        return len(todo)

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


class Collator:
    """Loads images and cached faces and builds an :class:`~feval_core.model.FEvalBatch` plus targets."""

    def __init__(self, model: Any, examples: Sequence[Example], faces: FaceCache) -> None:
        self.model = model
        self.examples = list(examples)
        self.faces = {k: v for k, v in faces.entries.items()}
        self._keys = {p: FaceCache.key(p) for p in {e.image for e in examples} | {e.ref for e in examples if e.ref}}

    def __call__(self, indices: Sequence[int]) -> dict[str, Any]:
        from .images import load_image
        from .model import Row

        rows = []
        exs = [self.examples[i] for i in indices]
        for ex in exs:
            ref = load_image(ex.ref) if ex.ref else None
            rows.append(Row(load_image(ex.image), ex.dim, prompt=ex.prompt, ref=ref,
                            face=self.faces[self._keys[ex.image]],
                            ref_face=self.faces[self._keys[ex.ref]] if ex.ref else None))
        return {
            "batch": self.model.collate(rows),
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


# -- the training module ------------------------------------------------------------------------------------
class TrainStep(nn.Module):
    """Forward pass and losses in one module, so data-parallel wrappers see every trainable parameter used."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any, mos: torch.Tensor, prompts: list[str], weights: dict[str, float],
                loss: str = "smooth_l1") -> dict[str, torch.Tensor]:
        out = self.model(batch)
        zero = out.level_logits.new_zeros(())
        level = reg = zero
        if weights.get("levels", 0.0) > 0:
            level = nn.functional.cross_entropy(out.level_logits.float(), level_targets(mos))
        if weights.get("regression", 0.0) > 0:
            pred, target = out.reg_score.float() / 100.0, mos.float() / 100.0
            if loss == "l1":
                reg = nn.functional.l1_loss(pred, target)
            elif loss == "mse":
                reg = nn.functional.mse_loss(pred, target)
            else:
                reg = nn.functional.smooth_l1_loss(pred, target, beta=0.05)
        router = nn.functional.cross_entropy(self.model.route(prompts).float(), batch.dim_idx)
        total = (weights.get("levels", 0.0) * level + weights.get("regression", 0.0) * reg
                 + weights.get("router", 0.0) * router)
        return {"loss": total, "level": level.detach(), "reg": reg.detach(), "router": router.detach(),
                "level_score": out.level_score.detach(),
                "reg_score": out.reg_score.detach() if out.reg_score is not None else out.level_score.detach()}


@contextlib.contextmanager
def expert_hooks(backbone: nn.Module, dims: Sequence[str] | None) -> Iterator[None]:
    """Keep per-row expert names on every LoRA layer until the backward pass is over.

    PEFT injects ``adapter_names`` with hooks that live only during ``forward``; gradient checkpointing
    re-runs the layers during ``backward``, which would then mix every row through one expert and
    silently give wrong gradients. These hooks stay until the context exits.
    """
    if dims is None:
        yield
        return
    from peft.tuners.lora import LoraLayer

    names = list(dims)

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs["adapter_names"] = names
        return args, kwargs

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True)
               for m in backbone.modules() if isinstance(m, LoraLayer)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def enable_gradient_checkpointing(model: Any) -> None:
    """Checkpoint the backbone's layers while it stays in eval mode (PEFT refuses per-row experts in training).

    transformers only checkpoints layers whose ``training`` flag is set, so the flag is set on the
    checkpointed layers alone (not their sub-modules: dropout and friends stay in eval mode).
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    base = model.base_model
    enable = getattr(base, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # pragma: no cover - older transformers
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    n = 0
    for m in base.modules():
        if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing:
            m.training = True
            n += 1
    if not n:
        raise ConfigError(f"{type(base).__name__} has no checkpointable layers; train without gradient checkpointing")


def stage_weights(cfg: TrainConfig, stage: str) -> dict[str, float]:
    w = {"router": cfg.router_weight}
    if stage in ("levels", "joint"):
        w["levels"] = cfg.level_weight
    if stage in ("regression", "joint"):
        w["regression"] = cfg.regression_weight
    return w


def lr_factor(step: int, stage_bounds: Sequence[int], cfg: TrainConfig) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based): warm-up then decay, restarted per stage."""
    start = 0
    for end in stage_bounds:
        if step < end:
            break
        start = end
    length = max(1, end - start)
    t = step - start
    warm = int(round(cfg.warmup_ratio * length))
    if t < warm:
        return (t + 1) / (warm + 1)
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = (t - warm) / max(1, length - warm)
    if cfg.lr_schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


# -- state ---------------------------------------------------------------------------------------------------
def _save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    from safetensors.torch import save_file

    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{idx}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    save_file(tensors, str(folder / _OPTIMIZER_FILE),
              metadata={"param_groups": json.dumps(sd["param_groups"]), "scalars": json.dumps(scalars)})


def _load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(folder / _OPTIMIZER_FILE), "pt") as f:
        meta = f.metadata() or {}
        state: dict[int, dict[str, Any]] = {}
        for key in f.keys():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = f.get_tensor(key)
    for idx, extra in json.loads(meta.get("scalars", "{}")).items():
        state.setdefault(int(idx), {}).update(extra)
    groups = json.loads(meta["param_groups"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(legacy=False)}


def _json_rng(state: dict[str, Any]) -> dict[str, Any]:
    """Python and NumPy global RNG states as plain JSON."""
    py = state["python"]
    npy = state["numpy"]
    return {"python": [py[0], list(py[1]), py[2]],
            "numpy": {"key": npy["state"]["key"].tolist(), "pos": int(npy["state"]["pos"]),
                      "has_gauss": int(npy["has_gauss"]), "gauss": float(npy["gauss"])}}


def _restore_json_rng(data: dict[str, Any]) -> None:
    py = data["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = data["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "has_gauss": npy["has_gauss"], "gauss": npy["gauss"],
                         "state": {"key": np.asarray(npy["key"], dtype=np.uint32), "pos": npy["pos"]}})


# -- the run ---------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What a run produced: the checkpoint folder, optimizer steps done, and the last validation metrics."""

    out: Path
    steps: int
    finished: bool
    seconds: float
    val: dict[str, dict[str, float]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def _split_train_val(cfg: TrainConfig, out: Path, main: bool) -> tuple[list[ManifestRow], list[ManifestRow]]:
    rows = read_manifest(cfg.manifest)
    if cfg.val_manifest:
        return rows, read_manifest(cfg.val_manifest)
    if cfg.val_fraction == 0:
        return rows, []
    from .splits import split_rows

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


def _check_resume(cfg: TrainConfig, out: Path) -> None:
    saved = out / TRAIN_CONFIG_NAME
    if not saved.is_file():
        raise ConfigError(f"--resume: {out} has no {TRAIN_CONFIG_NAME}; start a new run without --resume")
    old = TrainConfig.load(saved).to_dict()
    new = cfg.to_dict()
    diff = sorted(k for k in new if k not in _RESUME_FREE and old.get(k) != new.get(k))
    if diff:
        raise ConfigError(f"--resume: settings differ from the run in {out}: "
                          + ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
                          + "; resume with the same settings, or start a new run in another folder")


def train(cfg: TrainConfig) -> TrainResult:
    """Train F-Eval as configured and write the checkpoint to ``cfg.out``; see the module docstring."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    from tqdm.auto import tqdm

    from .model import FEvalModel

    t0 = time.time()
    out = Path(cfg.out).expanduser().absolute()
    accelerator = Accelerator(
        mixed_precision="bf16" if cfg.precision == "bf16" else "no",
        gradient_accumulation_steps=cfg.grad_accum,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    main = accelerator.is_main_process
    state_dir = out / STATE_DIR
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if cfg.resume:
            _check_resume(cfg, out)
            if not (state_dir / _STATE_FILE).is_file():
                raise ConfigError(f"--resume: no saved state in {state_dir}; start a new run without --resume")
        elif (state_dir / _STATE_FILE).is_file():
            raise ConfigError(f"{out} holds an unfinished or finished run; pass --resume to continue it, or "
                              "choose another --out")
        cfg.save(out)
    accelerator.wait_for_everyone()

    # -- data
    train_rows, val_rows = _split_train_val(cfg, out, main)
    dims = cfg.dims or tuple(d for d in DIMENSIONS if any(d in r.mos for r in train_rows))
    train_ex = expand_rows(train_rows, dims)
    val_ex = expand_rows(val_rows, dims)
    if not train_ex:
        raise ManifestError(f"no training rows with a MOS for {', '.join(dims)} in {cfg.manifest}")
    missing_dims = [d for d in dims if not any(e.dim == d for e in train_ex)]
    if missing_dims:
        raise ManifestError(f"no training MOS for {missing_dims}; drop them from --dims")

    base = cfg.base
    if Path(base).expanduser().is_dir():
        base = str(Path(base).expanduser().absolute())
        from .config import CONFIG_NAME

        if (Path(base) / CONFIG_NAME).is_file():
            raise ConfigError(f"--base {base} is a feval checkpoint; pass the backbone it was built on (its "
                              "base_model) instead")
    face_root = str(Path(cfg.face_root).expanduser().absolute()) if cfg.face_root else None
    fcfg = FEvalConfig(base_model=base, mode="trained", score_mode=cfg.score_mode, dims=dims,
                       num_face_tokens=cfg.num_face_tokens, lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                       lora_target_modules=cfg.lora_targets, max_image_pixels=cfg.max_image_pixels,
                       trust_remote_code=cfg.trust_remote_code,
                       face=FaceEncoderConfig(pack=cfg.face_pack, root=face_root, det_size=cfg.det_size,
                                              det_thresh=cfg.det_thresh))

    # -- faces, once per image, on the main process
    cache = FaceCache(out / FACE_CACHE_NAME)
    paths = [e.image for e in train_ex + val_ex] + [e.ref for e in train_ex + val_ex if e.ref]
    if main:
        todo = cache.missing(paths)
        if todo:
            from .faces import FaceEncoder

            device = str(accelerator.device) if accelerator.device.type == "cuda" else "cpu"
            encoder = FaceEncoder(cfg.face_pack, root=face_root, device=device,
                                  det_size=(cfg.det_size, cfg.det_size), det_thresh=cfg.det_thresh)
            cache.fill(todo, encoder, progress=cfg.progress)
            cache.save()
            del encoder
    accelerator.wait_for_everyone()
    if not main:
        cache = FaceCache(out / FACE_CACHE_NAME)
    no_face = sum(1 for p in dict.fromkeys(paths) if cache.get(p) is None)
    if no_face:
        logger.info("%d of %d images have no detected face (they get the learned 'no face' tokens)", no_face,
                    len(dict.fromkeys(paths)))

    # -- model
    torch.manual_seed(cfg.seed)
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    model = FEvalModel.build(fcfg, device=accelerator.device, dtype=dtype)
    named = list(model.trainable_parameters())
    for _, p in named:
        if p.dtype != torch.float32:  # trainable weights stay fp32 under mixed precision
            p.data = p.data.float()
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    head_names = ("heads.head.", "heads.router.")
    head_params = [p for n, p in named if n.startswith(head_names)]
    other_params = [p for n, p in named if not n.startswith(head_names)]
    optimizer = torch.optim.AdamW(
        [{"params": other_params, "lr": cfg.lr, "base_lr": cfg.lr},
         {"params": head_params, "lr": cfg.head_lr or 10 * cfg.lr, "base_lr": cfg.head_lr or 10 * cfg.lr}],
        weight_decay=cfg.weight_decay)
    logger.info("training %d parameters (%s) of %d, experts %s, schedule %s",
                sum(p.numel() for _, p in named), "projector, router, head, LoRA",
                sum(p.numel() for p in model.parameters()), ", ".join(dims), cfg.schedule)

    collate = Collator(model, train_ex, cache)
    sampler = EpochSampler(len(train_ex), cfg.seed)  # epochs are set through the (prepared) loader
    train_dl = torch.utils.data.DataLoader(RowDataset(train_ex), batch_size=cfg.batch_size, sampler=sampler,
                                           collate_fn=collate, num_workers=cfg.num_workers)
    val_dl = None
    if val_ex:
        val_dl = torch.utils.data.DataLoader(RowDataset(val_ex), batch_size=cfg.batch_size, shuffle=False,
                                             collate_fn=Collator(model, val_ex, cache), num_workers=cfg.num_workers)
    step_module = TrainStep(model)
    if val_dl is not None:
        step_module, optimizer, train_dl, val_dl = accelerator.prepare(step_module, optimizer, train_dl, val_dl)
    else:
        step_module, optimizer, train_dl = accelerator.prepare(step_module, optimizer, train_dl)

    micro_per_epoch = len(train_dl)
    steps_per_epoch = max(1, math.ceil(micro_per_epoch / cfg.grad_accum))
    total = cfg.max_steps or steps_per_epoch * cfg.epochs
    bounds = [max(1, round(total * cfg.stage1_fraction)), total] if len(cfg.stages) == 2 else [total]
    stop_at = min(total, cfg.stop_after) if cfg.stop_after else total

    # -- resume
    step, epoch, micro_in_epoch = 0, 0, 0
    if cfg.resume:
        step, epoch, micro_in_epoch, accelerator.step = _load_state(state_dir, model, optimizer, accelerator)
        logger.info("resumed at optimizer step %d (epoch %d, batch %d)", step, epoch, micro_in_epoch)

    log_path = out / LOG_NAME
    history: list[dict[str, Any]] = []
    last_val: dict[str, dict[str, float]] = {}
    running: dict[str, float] = {}
    count = 0
    bar = tqdm(total=stop_at, initial=step, desc="training", unit="step",
               disable=(not main) or (not cfg.progress) or None)

    def write_log(rec: dict[str, Any]) -> None:
        history.append(rec)
        if main:
            with log_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec, allow_nan=True) + "\n")

    def stage_of(s: int) -> str:
        return cfg.stages[0] if s < bounds[0] else cfg.stages[-1]

    def validate(s: int) -> None:
        nonlocal last_val
        if val_dl is None:
            return
        readout = "levels" if stage_of(max(0, s - 1)) == "levels" else "regression"
        last_val = _validate(step_module, val_dl, val_ex, accelerator, readout, dims)
        rec = {"step": s, "epoch": epoch, "val_readout": readout, "val": last_val,
               "val_srcc_mean": _mean([v["srcc"] for v in last_val.values()])}
        write_log(rec)
        if main:
            logger.info("step %d validation SRCC (%s): %s", s, readout,
                        ", ".join(f"{d} {v['srcc']:.3f}" for d, v in last_val.items()))

    done = step >= stop_at
    while not done:
        loader = accelerator.skip_first_batches(train_dl, micro_in_epoch) if micro_in_epoch else train_dl
        loader.set_epoch(epoch)  # the data order of an epoch depends on (seed, epoch) only
        for batch in loader:
            stage = stage_of(step)
            weights = stage_weights(cfg, stage)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * lr_factor(step, bounds, cfg)
            with accelerator.accumulate(step_module), \
                    expert_hooks(model.backbone, batch["batch"].dims if cfg.gradient_checkpointing else None):
                losses = step_module(batch["batch"], batch["mos"], batch["prompts"], weights, cfg.loss)
                accelerator.backward(losses["loss"])
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_([p for _, p in named], cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            micro_in_epoch += 1
            for k in ("loss", "level", "reg", "router"):
                running[k] = running.get(k, 0.0) + float(losses[k].detach())
            count += 1
            if not accelerator.sync_gradients:
                continue
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{running['loss'] / count:.4f}", stage=stage)
            if step % cfg.log_every == 0 or step == stop_at:
                means = accelerator.reduce(torch.tensor([running[k] / count for k in ("loss", "level", "reg",
                                                                                        "router")],
                                                        device=accelerator.device), reduction="mean").tolist()
                write_log({"step": step, "epoch": epoch, "stage": stage, "lr": optimizer.param_groups[0]["lr"],
                           "loss": means[0], "loss_level": means[1], "loss_reg": means[2], "loss_router": means[3],
                           "seconds": round(time.time() - t0, 2)})
                running, count = {}, 0
            boundary = step in bounds[:-1]
            if (cfg.eval_every and step % cfg.eval_every == 0) or boundary:
                validate(step)
            if step % cfg.save_every == 0 or step == stop_at:
                _save_state(state_dir, model, optimizer, accelerator, step,
                            epoch + (micro_in_epoch >= micro_per_epoch),
                            0 if micro_in_epoch >= micro_per_epoch else micro_in_epoch)
            if step >= stop_at:
                done = True
                break
        else:
            epoch += 1
            micro_in_epoch = 0
            if not cfg.eval_every and not done:
                validate(step)
            continue
        # left the epoch early (stopped)
        if micro_in_epoch >= micro_per_epoch:
            epoch += 1
            micro_in_epoch = 0
    bar.close()
    finished = step >= total
    if finished:
        if cfg.eval_every or not history or history[-1].get("step") != step or "val" not in history[-1]:
            validate(step)
        if main:
            _save_checkpoint(cfg, model, out)
        accelerator.wait_for_everyone()
    else:
        logger.info("stopped after %d of %d steps; continue with --resume", step, total)
    accelerator.end_training()
    return TrainResult(out, step, finished, time.time() - t0, last_val, history)


def _mean(values: Sequence[float]) -> float:
    vals = [v for v in values if isinstance(v, float) and math.isfinite(v)]
    return float(sum(vals) / len(vals)) if vals else float("nan")


@torch.no_grad()
def _validate(step_module: nn.Module, val_dl: Any, val_ex: Sequence[Example], accelerator: Any, readout: str,
              dims: Sequence[str]) -> dict[str, dict[str, float]]:
    from .metrics import correlation_table

    model = accelerator.unwrap_model(step_module).model
    preds, idxs = [], []
    for batch in val_dl:
        with accelerator.autocast():
            out = model(batch["batch"])
        score = out.level_score if readout == "levels" or out.reg_score is None else out.reg_score.clamp(0, 100)
        p, i = accelerator.gather_for_metrics((score.float(), batch["index"]))
        preds.append(p.cpu())
        idxs.append(i.cpu())
    pred = torch.cat(preds).numpy()
    idx = torch.cat(idxs).numpy()
    result: dict[str, dict[str, float]] = {}
    for d in dims:
        sel = [k for k, i in enumerate(idx) if val_ex[i].dim == d]
        if not sel:
            continue
        mos = np.array([val_ex[idx[k]].mos for k in sel])
        t = correlation_table(pred[sel], mos)
        result[d] = {"srcc": t["srcc"], "plcc": t["plcc"], "krcc": t["krcc"], "n": t["n"]}
    return result


def _save_state(folder: Path, model: Any, optimizer: Any, accelerator: Any, step: int, epoch: int,
                micro_in_epoch: int) -> None:
    """Write resumable state (safetensors + JSON) atomically: build ``state.tmp`` then swap it in."""
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rank = accelerator.process_index
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(tmp / f"rng_{rank}.safetensors"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        named = {n: p.detach().contiguous().cpu() for n, p in model.trainable_parameters()}
        save_file(named, str(tmp / _TRAINABLE_FILE))
        _save_optimizer(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer, tmp)
        state = {"step": step, "epoch": epoch, "micro_in_epoch": micro_in_epoch, "micro_steps": accelerator.step,
                 "num_processes": accelerator.num_processes, "rng": _json_rng(_rng_state())}
        (tmp / _STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _load_state(folder: Path, model: Any, optimizer: Any, accelerator: Any) -> tuple[int, int, int, int]:
    """Restore what :func:`_save_state` wrote; returns (step, epoch, micro-batch in epoch, micro-steps done)."""
    from safetensors.torch import load_file

    state = json.loads((folder / _STATE_FILE).read_text(encoding="utf-8"))
    if state["num_processes"] != accelerator.num_processes:
        raise ConfigError(f"the saved state is from {state['num_processes']} processes but this run has "
                          f"{accelerator.num_processes}; resume with the same number of processes")
    saved = load_file(str(folder / _TRAINABLE_FILE))
    named = dict(model.trainable_parameters())
    if set(saved) != set(named):
        raise ConfigError(f"saved state in {folder} does not match this model (different experts or ranks)")
    with torch.no_grad():
        for n, p in named.items():
            p.copy_(saved[n].to(p.device, p.dtype))
    _load_optimizer(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer, folder)
    rng_file = folder / f"rng_{accelerator.process_index}.safetensors"
    if rng_file.is_file():
        rng = load_file(str(rng_file))
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    _restore_json_rng(state["rng"])
    return int(state["step"]), int(state["epoch"]), int(state["micro_in_epoch"]), int(state["micro_steps"])


def _save_checkpoint(cfg: TrainConfig, model: Any, out: Path) -> None:
    """Write the trained checkpoint into the run folder (loadable with ``FEvalScorer.from_pretrained``)."""
    from .scorer import FEvalScorer

    conf = model.config
    conf.score_mode = cfg.score_mode
    if cfg.copy_base:
        src = Path(cfg.base).expanduser().absolute()
        shutil.copytree(src, out / "backbone", dirs_exist_ok=True)
        conf.base_model = "backbone"
    if cfg.copy_face_pack:
        from .faces import _resolve_root

        src = _resolve_root(conf.face.root) / "models" / conf.face.pack
        shutil.copytree(src, out / "face_pack" / "models" / conf.face.pack, dirs_exist_ok=True)
        conf.face.root = "face_pack"
    FEvalScorer(model, None, source=out).save_pretrained(out)
    logger.info("wrote the trained checkpoint to %s (score_mode=%s)", out, conf.score_mode)
