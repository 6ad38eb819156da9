"""The vision-language reference of MR-FIQA labels: how close an image is to a "high-resolution clear frontal face".

Two sources, both models the project already runs:

* :class:`ClipSimilarity` — a CLIP-style dual encoder through transformers (``CLIPModel``, ``SiglipModel``, ... via
  ``AutoModel``): the cosine between the image embedding and the embedding of :data:`VL_TEXT` (MR-FIQA uses BLIP's
  image-text contrastive score in the same way);
* :class:`FEvalQualityVL` — F-Eval's ``quality`` (a trained checkpoint, or a plain VLM's zero-shot rating words),
  divided by 100.

``vl_source("clip:PATH")`` / ``vl_source("feval:PATH")`` builds one from a command-line value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError

VL_TEXT = "a high-resolution clear frontal face photo, sharp and well lit"
KINDS = ("clip", "feval")


class ClipSimilarity:
    """Cosine similarity of images to a fixed text under a CLIP-style model (local folder or hub id, no remote code)."""

    name = "clip"

    def __init__(self, model: Any, processor: Any, text: str = VL_TEXT, device: str = "cpu") -> None:
        import torch

        self.model, self.processor, self.device = model.to(device).eval(), processor, device
        with torch.no_grad():
            tokens = processor(text=[text], return_tensors="pt", padding=True, truncation=True).to(device)
            self.text = _unit(_features(model.get_text_features(**tokens)))

    @classmethod
    def from_pretrained(cls, path: str, text: str = VL_TEXT, device: str | None = None) -> ClipSimilarity:
        import torch
        from transformers import AutoModel, AutoProcessor

        model = AutoModel.from_pretrained(path, trust_remote_code=False)
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise ConfigError(f"{path} is a {type(model).__name__}, not a CLIP-style dual encoder (it needs "
                              "get_image_features and get_text_features); give a CLIP or SigLIP model")
        processor = AutoProcessor.from_pretrained(path)
        return cls(model, processor, text, device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def __call__(self, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        import torch
        from PIL import Image

        out = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                pil = [Image.fromarray(np.asarray(im, np.uint8)) for im in images[start:start + batch_size]]
                pixels = self.processor(images=pil, return_tensors="pt").to(self.device)
                emb = _unit(_features(self.model.get_image_features(**pixels)))
                out.append((emb @ self.text.T).squeeze(1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)


def _features(out: Any) -> Any:
    """transformers 5 may wrap projected features in an output object; take the pooled tensor."""
    if hasattr(out, "pooler_output") and out.pooler_output is not None:
        return out.pooler_output
    return out


def _unit(x: Any) -> Any:
    import torch

    return torch.nn.functional.normalize(x.float(), dim=-1)


class FEvalQualityVL:
    """F-Eval's ``quality`` (0-100) / 100 from a checkpoint or a plain VLM (zero-shot rating words)."""

    name = "feval"

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer

    @classmethod
    def from_pretrained(cls, path: str, device: str | None = None, face_root: str | None = None) -> FEvalQualityVL:
        from ..scoring.scorer import FEvalScorer

        return cls(FEvalScorer.from_pretrained(path, device=device, face_root=face_root))

    def __call__(self, images: Sequence[np.ndarray], batch_size: int = 8) -> np.ndarray:
        from ..dimensions import DIMENSIONS

        res = self.scorer.score(list(images), dims=("quality",), batch_size=batch_size)
        return res.scores[:, DIMENSIONS.index("quality")].numpy().astype(np.float64) / 100.0


def parse_vl(value: str | None) -> tuple[str, str] | None:
    """``clip:PATH`` / ``feval:PATH`` -> (kind, path); None or ``none`` -> None; anything else: ConfigError."""
    if value is None or value == "none":
        return None
    kind, sep, path = value.partition(":")
    if not sep or kind not in KINDS or not path:
        raise ConfigError(f"the vision-language source must be clip:PATH (a CLIP-style model) or feval:PATH (an F-Eval "
                          f"checkpoint or plain VLM, zero-shot quality), or none; got {value!r}")
    return kind, path


def vl_source(value: str | None, device: str | None = None, face_root: str | None = None) -> Any | None:
    """``clip:PATH`` or ``feval:PATH`` -> a VL scorer; None or ``none`` -> None (the part is left out)."""
    parsed = parse_vl(value)
    if parsed is None:
        return None
    kind, path = parsed
    if kind == "clip":
        return ClipSimilarity.from_pretrained(path, device=device)
    return FEvalQualityVL.from_pretrained(path, device=device, face_root=face_root)
