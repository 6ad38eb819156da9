"""The two frozen video-side networks of FVQ-Rater, loaded the Hugging Face way (safetensors only):

* :class:`TemporalEncoder` — a transformers video model of the VideoMAE family (``AutoModel``): the clip's frames
  as tubelets; features are its last hidden state pooled over space, one vector per time slot;
* :class:`PortraitEncoder` — a transformers semantic-segmentation model (Segformer family,
  ``AutoModelForSemanticSegmentation``): the person matte (the softmax mass of the person labels) and the deepest
  encoder features pooled inside the matte, per key frame, plus the matte's area.

Preprocessing is torch-only (resize, centre crop, normalise with the model's ``preprocessor_config.json``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..model.checkpoint import check_checkpoint_tree
from ..model.config import read_json_object

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _norm_stats(source: str, hub_kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's normalisation from its ``preprocessor_config.json`` (a folder's, or a hub id's), else ImageNet's."""
    path = Path(source) / "preprocessor_config.json"
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if not Path(source).is_dir():
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(source, "preprocessor_config.json", **hub_kwargs))
        except (OSError, ValueError) as exc:  # no such file (or offline and not cached): the ImageNet statistics
            logger.info("%s: no preprocessor_config.json (%s); normalising with ImageNet statistics", source, exc)
    if path.is_file():
        data = read_json_object(path, "a preprocessor config")  # size-limited plain JSON, as every config
        mean = _channel_stats(data.get("image_mean", mean), path, "image_mean")
        std = _channel_stats(data.get("image_std", std), path, "image_std")
        if min(std) <= 0:
            raise ConfigError(f"{path}: image_std must be positive, got {std}; fix the model's preprocessor config "
                              "or delete it to normalise with the ImageNet statistics")
    return torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)


def _channel_stats(value: Any, path: Path, key: str) -> list[float]:
    """One number per RGB channel (a single number applies to all three), or a ConfigError naming the file."""
    values = [value] * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if (not isinstance(values, (list, tuple)) or len(values) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
        raise ConfigError(f"{path}: {key} must be three numbers (one per RGB channel), got {value!r}; fix the "
                          "model's preprocessor config or delete it to normalise with the ImageNet statistics")
    return [float(v) for v in values]


def _load(auto: Any, source: str, what: str, hub_kwargs: dict[str, Any]) -> nn.Module:
    if Path(source).is_dir():
        check_checkpoint_tree(Path(source))
    try:
        model = auto.from_pretrained(source, use_safetensors=True, trust_remote_code=False, **hub_kwargs)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"could not load the {what} from {source!r} ({exc}); download it on a connected "
                              f"machine (`hf download {source} --local-dir DIR`) and point video_config.json at "
                              "the folder") from exc
    model.requires_grad_(False)
    return model.eval()


def square_frames(frames: np.ndarray, side: int) -> torch.Tensor:
    """``[N, H, W, 3]`` uint8 -> ``[N, 3, side, side]`` float in [0, 1]: short side resized to ``side``, centre
    crop (the VideoMAE / Segformer processors' geometry)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
    h, w = x.shape[-2:]
    scale = side / min(h, w)
    nh, nw = max(side, round(h * scale)), max(side, round(w * scale))
    x = nn.functional.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - side) // 2, (nw - side) // 2
    return x[:, :, top:top + side, left:left + side].clamp(0, 1)


class TemporalEncoder(nn.Module):
    """Frozen video network: ``[B, T, H, W, 3]`` uint8 clips -> ``[B, T / tubelet, hidden]`` features."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        cfg = model.config
        for key in ("num_frames", "tubelet_size", "image_size", "patch_size", "hidden_size"):
            if not hasattr(cfg, key):
                raise ConfigError(f"the temporal encoder must be a VideoMAE-family video model (config with {key}); "
                                  f"{type(model).__name__} is not")
        self.model = model
        self.num_frames, self.tubelet = int(cfg.num_frames), int(cfg.tubelet_size)
        self.side, self.hidden_size = int(cfg.image_size), int(cfg.hidden_size)
        self.slots = self.num_frames // self.tubelet
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    @classmethod
    def from_pretrained(cls, source: str, **hub_kwargs: Any) -> TemporalEncoder:
        from transformers import AutoModel

        return cls(_load(AutoModel, source, "temporal encoder", hub_kwargs), *_norm_stats(source, hub_kwargs))

    @torch.no_grad()
    def forward(self, clips: list[np.ndarray]) -> torch.Tensor:
        dev = self.mean.device
        batch = []
        for clip in clips:
            if clip.shape[0] != self.num_frames:
                raise ConfigError(f"the temporal encoder takes {self.num_frames} frames, the clip has "
                                  f"{clip.shape[0]}: set num_clip_frames={self.num_frames} in video_config.json")
            x = square_frames(clip, self.side).to(dev)
            batch.append((x - self.mean) / self.std)
        pixels = torch.stack(batch).to(self.model.dtype)  # [B, T, 3, S, S]
        hidden = self.model(pixel_values=pixels).last_hidden_state.float()
        b, n, d = hidden.shape
        return hidden.view(b, self.slots, n // self.slots, d).mean(2)  # time-major tubelet tokens


class PortraitEncoder(nn.Module):
    """Frozen segmentation network: ``[N, H, W, 3]`` uint8 frames -> ``[N, C + 1]`` person features (pooled
    inside the matte) and the matte's area fraction."""

    def __init__(self, model: nn.Module, labels: tuple[str, ...], side: int, mean: torch.Tensor,
                 std: torch.Tensor) -> None:
        super().__init__()
        id2label = {int(k): str(v).lower() for k, v in getattr(model.config, "id2label", {}).items()}
        ids = [i for i, name in id2label.items() if name in {x.lower() for x in labels}]
        if not ids:
            raise ConfigError(f"the portrait model has no label named {list(labels)} (its labels: "
                              f"{sorted(id2label.values())[:20]}...); set portrait_labels in video_config.json")
        self.model, self.person_ids, self.side = model, ids, side
        self.feature_dim = int(model.config.hidden_sizes[-1]) + 1
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    @classmethod
    def from_pretrained(cls, source: str, labels: tuple[str, ...], side: int, **hub_kwargs: Any) -> PortraitEncoder:
        from transformers import AutoModelForSemanticSegmentation

        model = _load(AutoModelForSemanticSegmentation, source, "portrait segmenter", hub_kwargs)
        if not hasattr(model.config, "hidden_sizes"):
            raise ConfigError(f"the portrait model must be Segformer-family (hidden_sizes in its config); "
                              f"{type(model).__name__} is not")
        return cls(model, labels, side, *_norm_stats(source, hub_kwargs))

    @torch.no_grad()
    def matte_and_features(self, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = (square_frames(frames, self.side).to(self.mean.device) - self.mean) / self.std
        out = self.model(pixel_values=x.to(self.model.dtype), output_hidden_states=True)
        matte = out.logits.float().softmax(1)[:, self.person_ids].sum(1, keepdim=True)  # [N, 1, h, w]
        deep = out.hidden_states[-1].float()  # [N, C, h', w']
        m = nn.functional.interpolate(matte, size=deep.shape[-2:], mode="bilinear", align_corners=False)
        pooled = (deep * m).sum((2, 3)) / m.sum((2, 3)).clamp(min=1e-6)
        return matte, torch.cat([pooled, matte.mean((2, 3))], dim=1)

    def forward(self, frames: np.ndarray) -> torch.Tensor:
        return self.matte_and_features(frames)[1]
