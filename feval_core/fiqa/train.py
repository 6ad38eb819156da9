"""Training ViT-FIQA: identity head (ArcFace/CosFace margin softmax on the patch tokens' embedding) and quality head
(SmoothL1 to the CR-FIQA certainty ratio, computed online from the identity head), with accelerate.

Faces are aligned once with the face pack and kept in ``<out>/aligned_faces.safetensors``; images that cannot be
read or show no face are listed in ``skipped_images.jsonl``. ``<out>/state/`` holds resumable state (safetensors and
JSON only, :mod:`feval_core.train.state`); ``--resume`` continues where a run stopped, with the same result. At the
end the quality head's outputs on the training faces become the utility calibration, and ``<out>`` holds the model
(``fiqa_config.json`` + ``model.safetensors``) that :class:`~feval_core.fiqa.scorer.FIQAScorer` loads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..model.config import FaceEncoderConfig
from ..train.state import STATE_DIR, STATE_FILE, load_state, save_state
from .config import FIQAConfig
from .data import AlignedFaces, align_faces, identity_folders, load_aligned, save_aligned
from .labels import MarginHead, certainty_ratio, quantile_table
from .train_config import FIQATrainConfig
from .vit import ViTFIQA, crops_to_tensor

logger = logging.getLogger(__name__)

LOG_NAME = "fiqa_train_log.jsonl"
FACES_NAME = "aligned_faces.safetensors"
SKIPPED_NAME = "skipped_images.jsonl"
_KEYS = ("loss", "id", "quality", "cr", "acc")


@dataclass
class FIQATrainResult:
    out: Path
    steps: int
    finished: bool
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0


class TrainStep(nn.Module):
    """One forward of training: the losses of a batch of aligned crops and their identity labels."""

    def __init__(self, model: ViTFIQA, head: MarginHead, alpha: float) -> None:
        super().__init__()
        self.model, self.head, self.alpha = model, head, alpha

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor,
                targets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``targets``: given quality labels / 100 (NaN = none) in place of the CR label."""
        embedding, quality = self.model(pixels)
        logits, cos = self.head(embedding, labels)
        ident = F.cross_entropy(logits, labels)
        cr = certainty_ratio(cos, labels)
        if targets is None:
            qual = F.smooth_l1_loss(quality.float(), cr)
        else:
            has = torch.isfinite(targets)
            qual = F.smooth_l1_loss(quality.float()[has], targets[has]) if has.any() else quality.sum() * 0
        acc = (cos.detach().argmax(1) == labels).float().mean()
        return {"loss": ident + self.alpha * qual, "id": ident.detach(), "quality": qual.detach(),
                "cr": cr.mean(), "acc": acc}


class _Saved:
    """What :mod:`feval_core.train.state` saves of a run: trainable weights and every buffer (BatchNorm statistics)."""

    def __init__(self, step: TrainStep) -> None:
        self.step = step

    def trainable_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield from ((n, p) for n, p in self.step.named_parameters() if p.requires_grad)
        yield from self.step.named_buffers()


def build_model(cfg: FIQATrainConfig, num_classes: int) -> tuple[ViTFIQA, MarginHead]:
    """A fresh (or ``cfg.init``-initialised) ViT-FIQA and class centres for ``num_classes`` identities."""
    face = FaceEncoderConfig(pack=cfg.face_pack, root=str(Path(cfg.face_root).expanduser().absolute())
                             if cfg.face_root else None, det_size=cfg.det_size, det_thresh=cfg.det_thresh)
    torch.manual_seed(cfg.seed)
    if cfg.init:
        base = ViTFIQA.from_pretrained(cfg.init)
        config = dataclasses.replace(base.config, face=face, patches_see_quality=cfg.patches_see_quality,
                                     utility_quantiles=None, label="cr")
        model = ViTFIQA(config, cfg.drop_path, cfg.mask_ratio)
        model.load_state_dict(base.state_dict())
    else:
        config = FIQAConfig(**cfg.vit_shapes(), patches_see_quality=cfg.patches_see_quality, face=face,
                            source=f"trained from random init by feval fiqa train on {Path(cfg.data).name}")
        model = ViTFIQA(config, cfg.drop_path, cfg.mask_ratio)
    if cfg.freeze_recognizer:
        for p in model.recognizer_parameters():
            p.requires_grad_(False)
    head = MarginHead(config.num_features, num_classes, cfg.margin, cfg.margin_value, cfg.scale)
    return model, head


def _accelerator(cfg: FIQATrainConfig) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    AcceleratorState._reset_state()
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="bf16" if cfg.precision == "bf16" else "no",
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def prepare_faces(cfg: FIQATrainConfig, out: Path, acc: Any) -> tuple[AlignedFaces, np.ndarray, list[str]]:
    """Aligned faces of the data set (built once by the main process), identity labels and identity names."""
    path = out / FACES_NAME
    if acc.is_main_process and not path.is_file():
        from tqdm.auto import tqdm

        from ..faces.encoder import FaceEncoder

        samples = identity_folders(cfg.data)
        encoder = FaceEncoder(cfg.face_pack, root=cfg.face_root, det_size=(cfg.det_size, cfg.det_size),
                              det_thresh=cfg.det_thresh)
        with tqdm(total=len(samples), desc="aligning faces", unit="img", disable=(not cfg.progress) or None) as bar:
            faces = align_faces(samples, encoder, bar.update)
        save_aligned(faces, path)
        with (out / SKIPPED_NAME).open("w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in faces.skipped)
    acc.wait_for_everyone()
    faces = load_aligned(path)
    names = sorted({s.identity for s in faces.samples})
    if len(names) < 2 or len(faces.samples) < cfg.batch_size:
        raise ConfigError(f"{cfg.data}: {len(faces.samples)} usable faces of {len(names)} identities; training needs "
                          f"two identities and at least --batch-size ({cfg.batch_size}) faces (see {SKIPPED_NAME})")
    lookup = {n: i for i, n in enumerate(names)}
    return faces, np.array([lookup[s.identity] for s in faces.samples], np.int64), names


def given_targets(cfg: FIQATrainConfig, faces: AlignedFaces) -> torch.Tensor | None:
    """``--labels`` / 100 per aligned face (NaN where an image has no label); None without ``--labels``."""
    if cfg.labels is None:
        return None
    from .mrlabels import read_labels

    table = read_labels(cfg.labels, cfg.label_key)
    values = [table.get(str(Path(s.path).resolve()), float("nan")) / 100.0 for s in faces.samples]
    found = sum(1 for v in values if v == v)
    if not found:
        raise ConfigError(f"--labels {cfg.labels}: none of its images is among the {len(values)} training faces; "
                          "label the same folder (`feval fiqa label`)")
    logger.info("quality head learns %s from %s (%d of %d faces labelled)", cfg.label_key, cfg.labels, found,
                len(values))
    return torch.tensor(values, dtype=torch.float32)


def lr_factor(step: int, total: int, warmup_fraction: float) -> float:
    """Linear warm-up, then arcface_torch's polynomial decay (power 2) to 0."""
    warm = int(total * warmup_fraction)
    if step < warm:
        return (step + 1) / warm
    return (1 - (step - warm) / max(1, total - warm)) ** 2


class _Indices(torch.utils.data.Dataset):
    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[int, int]:
        return i, int(self.labels[i])


def train_fiqa(cfg: FIQATrainConfig) -> FIQATrainResult:
    """Train ViT-FIQA as configured; see the module docstring."""
    return _Run(cfg).run()


class _Run:
    def __init__(self, cfg: FIQATrainConfig) -> None:
        self.cfg, self.t0 = cfg, time.time()
        self.out = Path(cfg.out).expanduser().absolute()
        self.acc = _accelerator(cfg)
        self.history: list[dict[str, Any]] = []
        self.step = self.epoch = self.micro = 0

    def _check_folder(self) -> None:
        cfg, state = self.cfg, self.out / STATE_DIR / STATE_FILE
        if cfg.resume:
            if not state.is_file():
                raise ConfigError(f"--resume: no saved state in {self.out / STATE_DIR}; start without --resume")
            cfg.check_resume(self.out)
        elif state.is_file():
            raise ConfigError(f"{self.out} holds a run; pass --resume to continue it, or choose another --out")
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out)
        self.acc.wait_for_everyone()

    def _prepare(self) -> None:
        cfg, acc = self.cfg, self.acc
        self.faces, labels, names = prepare_faces(cfg, self.out, acc)
        self.crops = torch.from_numpy(self.faces.crops)
        self.targets = given_targets(cfg, self.faces)
        model, head = build_model(cfg, len(names))
        step = TrainStep(model, head, cfg.alpha)
        params = [p for p in step.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        from ..train.data import EpochSampler

        loader = torch.utils.data.DataLoader(_Indices(labels), batch_size=cfg.batch_size, drop_last=True,
                                             sampler=EpochSampler(len(labels), cfg.seed))
        self.module, self.optimizer, self.loader = acc.prepare(step, optimizer, loader)
        self.model = model
        self.per_epoch = len(self.loader)
        self.total = cfg.max_steps or self.per_epoch * cfg.epochs
        self.stop_at = min(self.total, cfg.stop_after or self.total)
        logger.info("training ViT-FIQA on %d faces of %d identities: %d steps, recognizer %s", len(labels), len(names),
                    self.total, "frozen" if cfg.freeze_recognizer else "trained")

    def run(self) -> FIQATrainResult:
        from tqdm.auto import tqdm

        self._check_folder()
        self._prepare()
        saved = _Saved(self.acc.unwrap_model(self.module))
        if self.cfg.resume:
            st = load_state(self.out / STATE_DIR, saved, self.optimizer, self.acc)
            self.step, self.epoch, self.micro = st.step, st.epoch, st.micro_in_epoch
        self.bar = tqdm(total=self.stop_at, initial=self.step, desc="training ViT-FIQA", unit="step",
                        disable=(not self.acc.is_main_process) or (not self.cfg.progress) or None)
        while self.step < self.stop_at:
            self._epoch(saved)
        self.bar.close()
        finished = self.step >= self.total
        if finished:
            self._finish()
        self.acc.end_training()
        return FIQATrainResult(self.out, self.step, finished, time.time() - self.t0, self.history,
                               len(self.faces.skipped))

    def _epoch(self, saved: _Saved) -> None:
        acc, cfg = self.acc, self.cfg
        loader = acc.skip_first_batches(self.loader, self.micro) if self.micro else self.loader
        loader.set_epoch(self.epoch)
        for index, labels in loader:
            self._train_step(index, labels)
            self.micro += 1
            end = self.micro >= self.per_epoch
            if self.step % cfg.save_every == 0 or self.step == self.stop_at:
                save_state(self.out / STATE_DIR, saved, self.optimizer, acc, self.step, self.epoch + end,
                           0 if end else self.micro)
            if self.step >= self.stop_at:
                if end:
                    self.epoch, self.micro = self.epoch + 1, 0
                return
        self.epoch, self.micro = self.epoch + 1, 0

    def _train_step(self, index: torch.Tensor, labels: torch.Tensor) -> None:
        cfg, acc = self.cfg, self.acc
        self.module.train()
        if cfg.freeze_recognizer:
            self.model.vit.eval()  # frozen: fixed BatchNorm statistics, no stochastic depth
        # flips, masking and stochastic depth draw from a seed of (run, step, process): a resumed run draws the same
        torch.manual_seed(cfg.seed * 1_000_003 + self.step * 1_009 + acc.process_index)
        pixels = crops_to_tensor(self.crops[index.cpu()], acc.device)
        if cfg.flip:
            flip = torch.rand(pixels.shape[0]) < 0.5
            pixels[flip.to(pixels.device)] = pixels[flip.to(pixels.device)].flip(-1)
        for g in self.optimizer.param_groups:
            g["lr"] = cfg.lr * lr_factor(self.step, self.total, cfg.warmup_fraction)
        targets = None if self.targets is None else self.targets[index.cpu()].to(acc.device)
        with acc.autocast():
            losses = self.module(pixels, labels.to(acc.device), targets)
        acc.backward(losses["loss"])
        if cfg.max_grad_norm:
            acc.clip_grad_norm_([p for p in self.module.parameters() if p.requires_grad], cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.bar.update(1)
        if self.step % cfg.log_every == 0 or self.step == self.stop_at:
            self._log(losses)

    def _log(self, losses: dict[str, torch.Tensor]) -> None:
        local = torch.stack([losses[k].detach().float() for k in _KEYS])
        means = self.acc.reduce(local, reduction="mean").tolist()
        rec = {"step": self.step, "epoch": self.epoch, "lr": self.optimizer.param_groups[0]["lr"],
               **{k: v for k, v in zip(_KEYS, means)}, "seconds": round(time.time() - self.t0, 2)}
        self.history.append(rec)
        self.bar.set_postfix(loss=f"{means[0]:.3f}", acc=f"{means[4]:.2f}")
        if self.acc.is_main_process:
            with (self.out / LOG_NAME).open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec) + "\n")

    def _finish(self) -> None:
        """Calibrate utility on the training faces and write the model into the run folder (main process)."""
        if self.acc.is_main_process:
            model = self.model.eval()
            raw = []
            with torch.no_grad():
                for start in range(0, len(self.crops), 256):
                    raw.append(model(crops_to_tensor(self.crops[start:start + 256], self.acc.device))[1].float().cpu())
            model.config.utility_quantiles = quantile_table(torch.cat(raw).numpy())
            if self.targets is not None:
                model.config.label = "labels"
            model.save_pretrained(self.out)
            logger.info("wrote ViT-FIQA to %s (utility calibrated on %d training faces)", self.out, len(self.crops))
        self.acc.wait_for_everyone()

