"""Reading and writing a video checkpoint: the image checkpoint's layout (``feval_config.json``,
``projectors.safetensors``, ``adapters/quality/``) plus ``video_config.json`` and ``video_projectors.safetensors``;
the temporal encoder and the portrait segmenter are folders inside it or named by hub id. Safetensors only."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..model.checkpoint import (
    HUB_PATTERNS,
    TrainedWeights,
    check_checkpoint_tree,
    check_hub_id,
    hub_snapshot,
    shipped_folders,
)
from ..model.config import CONFIG_NAME, FEvalConfig
from .config import VIDEO_CONFIG_NAME, VIDEO_PROJECTORS_NAME, VideoConfig, is_video_checkpoint
from .encoders import PortraitEncoder, TemporalEncoder
from .features import FeatureExtractor
from .model import VideoLMM

logger = logging.getLogger(__name__)


@dataclass
class VideoParts:
    """Everything a video checkpoint loads into."""

    model: VideoLMM
    extractor: FeatureExtractor
    folder: Path


def resolve_inside(folder: Path | None, name: str) -> str:
    """A relative model name that is a folder of the checkpoint -> its path; anything else as given (hub id)."""
    if folder is not None and not Path(name).is_absolute() and (folder / name).is_dir():
        path = (folder / name).resolve()
        if not path.is_relative_to(folder.resolve()):
            raise CheckpointError(f"{name!r} points outside the checkpoint folder {folder}")
        return str(path)
    return name


def load_encoders(vconfig: VideoConfig, folder: Path | None, device: str | torch.device = "cpu",
                  **hub_kwargs: Any) -> tuple[TemporalEncoder | None, PortraitEncoder | None]:
    temporal = portrait = None
    if vconfig.uses("temporal"):
        temporal = TemporalEncoder.from_pretrained(resolve_inside(folder, vconfig.temporal_model), **hub_kwargs)
    if vconfig.uses("portrait"):
        portrait = PortraitEncoder.from_pretrained(resolve_inside(folder, vconfig.portrait_model),
                                                   vconfig.portrait_labels, vconfig.portrait_size, **hub_kwargs)
    return (temporal.to(device) if temporal else None), (portrait.to(device) if portrait else None)


def build_video_model(config: FEvalConfig, vconfig: VideoConfig, temporal: TemporalEncoder | None,
                      portrait: PortraitEncoder | None, *, base_dir: Path | None = None, device: Any = "cpu",
                      dtype: torch.dtype = torch.float32, weights: TrainedWeights | None = None,
                      video_state: dict[str, torch.Tensor] | None = None, random_adapters: bool = False,
                      hub_kwargs: dict[str, Any] | None = None, merge_vision: bool = False) -> VideoLMM:
    """The LMM (loaded as the image model is) with the video projectors sized by the encoders; ``merge_vision``
    merges its vision expert into the tower (scoring only, see :meth:`FEvalModel.merge_vision_expert`)."""
    weights = weights or TrainedWeights()
    model = VideoLMM.build(config, base_dir=base_dir, device=device, dtype=dtype, heads_state=weights.heads,
                           adapters_dir=weights.adapters, random_adapters=random_adapters,
                           vision_projector_state=weights.vision_projector, hub_kwargs=hub_kwargs or {},
                           merge_vision=merge_vision)
    slots = temporal.slots if temporal is not None else 1
    tdim = temporal.hidden_size if temporal is not None else 1
    pdim = portrait.feature_dim if portrait is not None else 1
    return model.attach_video(vconfig, slots, tdim, pdim, video_state)


IMAGE_FIX = ("score images with it (`feval score IMAGE --model ...`, FEvalScorer, the 'Load F-Eval model' node); "
             "for videos use a video checkpoint (video_config.json) from `feval video train` or "
             "`feval make-tiny --video DIR`")


def resolve_video_checkpoint(path_or_id: str | Path, **hub_kwargs: Any) -> Path:
    """The local folder of a video checkpoint: a folder, or a hub id whose checkpoint files, video files and
    shipped folders (backbone, face pack, temporal and portrait encoders) are fetched with ``snapshot_download``
    (``HF_HUB_OFFLINE=1``: from the cache only). Image checkpoints are refused with what to do."""
    src = str(path_or_id)
    folder = Path(src).expanduser()
    if not folder.exists():
        patterns = HUB_PATTERNS + [VIDEO_PROJECTORS_NAME]
        small = hub_snapshot(check_hub_id(src), patterns, **hub_kwargs)
        _check_kind(small, src)
        config, vconfig = FEvalConfig.load(small), VideoConfig.load(small)
        folder = hub_snapshot(src, patterns + shipped_folders(config.base_model, config.face.root,
                                                              vconfig.temporal_model, vconfig.portrait_model),
                              **hub_kwargs)
    elif not folder.is_dir():
        raise CheckpointError(f"{folder} is a file; pass the video checkpoint folder (it holds {VIDEO_CONFIG_NAME})")
    _check_kind(folder, src)
    check_checkpoint_tree(folder)
    return folder.resolve()


def _check_kind(folder: Path, name: str) -> None:
    if not (folder / CONFIG_NAME).is_file():
        raise CheckpointError(f"{name} is not a feval checkpoint (no {CONFIG_NAME}); make one with "
                              "`feval make-tiny --video DIR` or `feval video train ...`")
    if not is_video_checkpoint(folder):
        raise CheckpointError(f"{name} is an F-Eval image checkpoint (no {VIDEO_CONFIG_NAME}): it scores images, "
                              f"not videos; {IMAGE_FIX}")


def load_video_checkpoint(folder: str | Path, *, device: str | torch.device = "cpu",
                          dtype: torch.dtype = torch.float32, face_encoder: Any = None, merge_vision: bool = False,
                          **hub_kwargs: Any) -> VideoParts:
    """Load a video checkpoint (a folder or a hub id, see :func:`resolve_video_checkpoint`); the encoders it
    names are read from inside it when shipped there, else loaded by hub id. ``merge_vision``: merge the vision
    expert into the tower, for scoring (:class:`~feval_core.video.scorer.VideoScorer` does); the default keeps it
    unmerged, so that the loaded model can be trained and saved."""
    folder = resolve_video_checkpoint(folder, **hub_kwargs)
    config, vconfig = FEvalConfig.load(folder), VideoConfig.load(folder)
    from safetensors.torch import load_file

    if not (folder / VIDEO_PROJECTORS_NAME).is_file():
        raise CheckpointError(f"{folder} has no {VIDEO_PROJECTORS_NAME}; re-save it with save_video_checkpoint")
    temporal, portrait = load_encoders(vconfig, folder, device, **hub_kwargs)
    model = build_video_model(config, vconfig, temporal, portrait, base_dir=folder, device=device, dtype=dtype,
                              weights=TrainedWeights.load(folder, config),
                              video_state=load_file(str(folder / VIDEO_PROJECTORS_NAME)), hub_kwargs=hub_kwargs,
                              merge_vision=merge_vision)
    return VideoParts(model, FeatureExtractor(vconfig, temporal, portrait, face_encoder), folder)


def save_video_checkpoint(model: VideoLMM, out: str | Path, *, source: Path | None = None) -> Path:
    """Write the checkpoint; folders (backbone, encoders, face pack) inside ``source`` are copied along."""
    from safetensors.torch import save_file

    model.check_unmerged("save it as a checkpoint")  # before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg, vcfg = model.config, model.vconfig
    if source is not None:
        for rel in (cfg.base_model, cfg.face.root, vcfg.temporal_model, vcfg.portrait_model):
            if rel and not Path(rel).is_absolute() and (source / rel).is_dir():
                if (out / rel).resolve() != (source / rel).resolve():
                    shutil.copytree(source / rel, out / rel, dirs_exist_ok=True)
    TrainedWeights.save(model, out)
    state = {k: v.detach().contiguous().cpu() for k, v in model.video.state_dict().items()}
    save_file(state, str(out / VIDEO_PROJECTORS_NAME), metadata={"format": "pt"})
    cfg.save(out)
    vcfg.save(out)
    return out
