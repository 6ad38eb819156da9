"""A differentiable F-Eval reward for ReFL / DRaFT / AlignProp-style training.

From a ``[B,3,H,W]`` image tensor in [0, 1] that carries gradients to the reward, with torch-only
preprocessing (:func:`feval_core.differentiable.pixel_values_from_tensors`: no PIL, no numpy round trip)
and :meth:`FEvalModel.forward` on an ``FEvalBatch`` whose text/token layout comes from the processor
(it only needs the image sizes) and whose ``pixel_values`` come from the torch path.

What is differentiable, and why:

* **quality, authenticity, correspondence** — always: the score (rating-word probabilities and/or the
  regression head) is a smooth function of the last hidden state, which depends on the pixels through
  the vision tower.
* **identity, trained checkpoint** — yes: the LMM's identity expert reads the image through the vision
  tower too (the reference image is a constant).
* **identity, zero-shot** — no: it is the cosine of two ArcFace embeddings, and ArcFace runs in
  insightface's ONNX Runtime, outside autograd. Its value is still returned (as a constant), so the
  reward's value is right, but it adds nothing to the gradient. Pass ``face_embedder`` (a torch port of
  the recognizer) to make it differentiable: faces are then cropped differentiably
  (:func:`feval_core.differentiable.aligned_face_crops`) and embedded in torch.

Face *detection* (boxes, key points) always runs without gradients (it is piecewise constant anyway);
in trained mode the ArcFace embedding fed to the face tokens is a constant unless ``face_embedder`` is given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from feval_core.differentiable import aligned_face_crops, pixel_values_from_tensors
from feval_core.dimensions import DIM_INDEX, DIMENSIONS, NEEDS_PROMPT, NEEDS_REF
from feval_core.faces import arcface_identity_score
from feval_core.images import broadcast, load_image
from feval_core.model import Row
from feval_core.scorer import _broadcast_refs, _clean_prompt

from .core import Weights, get_scorer, resolve_weights, weighted_dims, weighted_reward

if TYPE_CHECKING:  # pragma: no cover
    from feval_core.scorer import FEvalScorer

logger = logging.getLogger(__name__)

FaceEmbedder = Callable[[torch.Tensor], torch.Tensor]
"""``[N, 3, 112, 112]`` ArcFace-aligned RGB crops in [0, 1] -> ``[N, D]`` embeddings (a torch module)."""


def differentiable_dims(scorer: FEvalScorer, face_embedder: FaceEmbedder | None = None) -> tuple[str, ...]:
    """The dimensions whose score carries gradients to the pixels with this scorer (see the module doc)."""
    dims = tuple(scorer.config.dims)
    if scorer.model.trained or face_embedder is not None:
        return dims
    return tuple(d for d in dims if d != "identity")


class DifferentiableReward:
    """``reward(images, prompts, refs) -> [B]`` weighted F-Eval reward with gradients w.r.t. ``images``.

    ``images``: ``[B,3,H,W]`` (or ``[B,H,W,3]``) float in [0, 1], on any device. The scorer's frozen
    model is used as is (no copy); calls are serialised with the scorer's lock.
    """

    def __init__(self, scorer: FEvalScorer | str | Path | None = None, weights: Weights = None, *,
                 nan_reward: float = 0.0, face_embedder: FaceEmbedder | None = None) -> None:
        self.scorer = get_scorer(scorer)
        self.weights = resolve_weights(weights)
        self.nan_reward = nan_reward
        self.face_embedder = face_embedder
        self.dims = tuple(d for d in weighted_dims(self.weights) if d in self.scorer.config.dims)
        constant = [d for d in self.dims if d not in differentiable_dims(self.scorer, face_embedder)]
        if constant:
            logger.warning("differentiable reward: %s carries no gradient with this scorer (zero-shot identity is "
                           "an ONNX ArcFace cosine); its value still counts in the reward. Give it weight 0 or pass "
                           "face_embedder= to change that", ", ".join(constant))

    def __call__(self, images: torch.Tensor, prompts: Any = None, refs: Any = None, *,
                 faces: Sequence[Any] | None = None) -> torch.Tensor:
        return weighted_reward(self.scores(images, prompts, refs, faces=faces), self.weights, self.nan_reward)

    # -- scores -------------------------------------------------------------------------------
    def scores(self, images: torch.Tensor, prompts: Any = None, refs: Any = None, *,
               faces: Sequence[Any] | None = None) -> torch.Tensor:
        """``[B, 4]`` scores in ``DIMENSIONS`` order (NaN where not scored), differentiable w.r.t. ``images``.

        ``faces``: one ``FaceInfo`` (or None) per image from :meth:`detect_faces`, to hold detections fixed
        (e.g. across several gradient steps); by default faces are detected on ``images`` now.
        """
        images = _as_bchw(images)
        n = images.shape[0]
        if faces is not None and len(faces) != n:
            raise ValueError(f"got {n} images but {len(faces)} face detections; pass one FaceInfo (or None) per image")
        prompt_list = broadcast(prompts, n, "prompts")
        ref_list = _broadcast_refs(refs, n)
        sc = self.scorer
        model = sc.model
        tok = model.processor.tokenizer
        notes: list[str] = []  # prompt truncation notes (the scorer reports them; here they are only logged)
        with sc._lock:
            infos = list(faces) if faces is not None else self.detect_faces(images)
            face_vecs = self._face_vectors(images, infos)
            ref_cache: dict[int, tuple[Image.Image, Any, torch.Tensor | None, torch.Tensor]] = {}
            rows: list[Row] = []
            where: list[tuple[int, int]] = []
            sources: list[tuple[torch.Tensor | None, int]] = []  # (ref tensor, image index) per row
            face_rows: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []
            constants: dict[tuple[int, int], torch.Tensor] = {}
            for i in range(n):
                placeholder = Image.new("RGB", (images.shape[-1], images.shape[-2]))
                for d in self.dims:
                    prompt = None
                    if d in NEEDS_PROMPT:
                        prompt = _clean_prompt(prompt_list[i], tok, notes)
                        if prompt is None:
                            continue
                    ref_pil = ref_info = ref_vec = ref_t = None
                    if d in NEEDS_REF:
                        if ref_list[i] is None:
                            continue
                        ref_pil, ref_info, ref_vec, ref_t = self._ref(ref_list[i], ref_cache)
                        if not model.trained:
                            value = self._zero_shot_identity(face_vecs[i], ref_vec, infos[i], ref_info)
                            if value is not None:
                                constants[(i, DIM_INDEX[d])] = value
                            continue
                    rows.append(Row(placeholder, d, prompt=prompt, ref=ref_pil,
                                    face=None if infos[i] is None else infos[i].embedding,
                                    ref_face=None if ref_info is None else ref_info.embedding))
                    where.append((i, DIM_INDEX[d]))
                    sources.append((ref_t, i))
                    face_rows.append((ref_vec, face_vecs[i]))
            values = self._forward(images, rows, sources, face_rows) if rows else None
        if notes:
            logger.debug("differentiable reward: %s", "; ".join(sorted(set(notes))))
        out = torch.full((n, len(DIMENSIONS)), float("nan"), dtype=torch.float32, device=images.device)
        entries = list(zip(where, values.unbind(0))) if values is not None else []
        entries += list(constants.items())
        if entries:
            ii = torch.tensor([e[0][0] for e in entries], device=images.device)
            jj = torch.tensor([e[0][1] for e in entries], device=images.device)
            vals = torch.stack([e[1].float().to(images.device).reshape(()) for e in entries])
            out = out.index_put((ii, jj), vals)
        return out

    def _forward(self, images: torch.Tensor, rows: list[Row], sources: list[tuple[torch.Tensor | None, int]],
                 face_rows: list[tuple[torch.Tensor | None, torch.Tensor | None]]) -> torch.Tensor:
        model = self.scorer.model
        batch = model.collate(rows)  # token layout, grids and face placeholders from the processor
        ordered: list[torch.Tensor] = []
        for ref_t, i in sources:  # the processor's image order: reference first in identity rows
            if ref_t is not None:
                ordered.append(ref_t.to(images.device, images.dtype))
            ordered.append(images[i])
        pv = pixel_values_from_tensors(model.processor.image_processor, ordered)
        for key, value in pv.items():
            if key == "pixel_values":
                continue
            if key in batch.inputs and not torch.equal(batch.inputs[key].cpu(), value.cpu()):
                raise RuntimeError(f"torch preprocessing gave {key}={value.tolist()} but the processor "
                                   f"{batch.inputs[key].tolist()}; this processor configuration is not supported")
        ref_pv = batch.inputs["pixel_values"]
        if tuple(pv["pixel_values"].shape) != tuple(ref_pv.shape):
            raise RuntimeError(f"torch preprocessing made pixel_values of shape {list(pv['pixel_values'].shape)}, "
                               f"the processor {list(ref_pv.shape)}; this processor configuration is not supported")
        batch = batch.to(model.device)
        batch.inputs["pixel_values"] = pv["pixel_values"].to(model.device, model.dtype)
        if self.face_embedder is not None and model.num_face_tokens:
            batch.faces = self._face_tensor(rows, face_rows, batch.faces)
        out = model(batch)
        return model.scores(out)

    # -- faces --------------------------------------------------------------------------------
    def detect_faces(self, images: torch.Tensor) -> list[Any]:
        """Each image's ``FaceInfo`` (None without a face model), found on its 8-bit copy without gradients.

        Scores depend on detections in a piecewise-constant way (a pixel change can move a box or change
        the ArcFace embedding); gradients treat them as fixed.
        """
        images = _as_bchw(images)
        enc = self.scorer.face_encoder
        if enc is None:
            return [None] * images.shape[0]
        with torch.no_grad():
            arrays = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
        return [enc.analyze(np.ascontiguousarray(a.numpy())) for a in arrays]

    def _face_vectors(self, images: torch.Tensor, infos: list[Any]) -> list[torch.Tensor | None]:
        """Unit embeddings of each image's main face from ``face_embedder`` (with gradients), or Nones."""
        if self.face_embedder is None:
            return [None] * images.shape[0]
        kps = [None if info is None or info.kps is None else info.kps for info in infos]
        if all(k is None for k in kps):
            return [None] * images.shape[0]
        emb = self.face_embedder(aligned_face_crops(images, kps))
        emb = emb / emb.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        return [emb[i] if kps[i] is not None else None for i in range(images.shape[0])]

    def _ref(self, ref: Any, cache: dict[int, Any]) -> tuple[Image.Image, Any, torch.Tensor | None, torch.Tensor]:
        """A reference's image, face, ``face_embedder`` vector (or None) and ``[3,H,W]`` tensor, once per call."""
        key = id(ref)
        if key not in cache:
            pil = load_image(ref)
            tensor = _pil_tensor(pil)
            enc = self.scorer.face_encoder
            info = enc.analyze(pil) if enc is not None else None
            vec = None
            if self.face_embedder is not None and info is not None and info.kps is not None:
                with torch.no_grad():
                    crop = aligned_face_crops(tensor.unsqueeze(0), [info.kps])
                    vec = self.face_embedder(crop.to(_module_device(self.face_embedder)))[0]
                    vec = vec / vec.norm().clamp(min=1e-12)
            cache[key] = (pil, info, vec, tensor)
        return cache[key]

    def _zero_shot_identity(self, face_vec: torch.Tensor | None, ref_vec: torch.Tensor | None, info: Any,
                            ref_info: Any) -> torch.Tensor | None:
        if self.face_embedder is not None:
            if face_vec is None or ref_vec is None:
                return None
            return 100.0 * (face_vec * ref_vec.to(face_vec.device)).sum().clamp(0.0, 1.0)
        if info is None or ref_info is None or info.embedding is None or ref_info.embedding is None:
            return None
        from feval_core.faces import FaceEncoder

        return torch.tensor(arcface_identity_score(FaceEncoder.cosine(info.embedding, ref_info.embedding)))

    def _face_tensor(self, rows: list[Row], face_rows: list[tuple[torch.Tensor | None, torch.Tensor | None]],
                     constant: torch.Tensor | None) -> torch.Tensor:
        """Face vectors in token order, the image's own face from ``face_embedder`` (with gradients)."""
        model = self.scorer.model
        dim = model.config.face_dim
        vecs: list[torch.Tensor] = []
        for row, (ref_vec, face_vec) in zip(rows, face_rows):
            for v in ((ref_vec, face_vec) if row.dim == "identity" else (face_vec,)):
                if v is not None and v.numel() != dim:
                    raise ValueError(f"face_embedder gives {v.numel()}-d embeddings; this checkpoint's projector "
                                     f"takes {dim}-d (ArcFace) embeddings")
                vecs.append(v.reshape(dim).float().to(model.device) if v is not None
                            else torch.zeros(dim, device=model.device))
        faces = torch.stack(vecs)
        if constant is not None and constant.shape != faces.shape:
            raise RuntimeError(f"{faces.shape[0]} face vectors for {constant.shape[0]} face slots")
        return faces


def differentiable_reward(images: torch.Tensor, prompts: Any = None, refs: Any = None, weights: Weights = None,
                          scorer: FEvalScorer | str | Path | None = None, *, nan_reward: float = 0.0,
                          face_embedder: FaceEmbedder | None = None) -> torch.Tensor:
    """One-call form of :class:`DifferentiableReward` (build the class once when calling it in a loop)."""
    return DifferentiableReward(scorer, weights, nan_reward=nan_reward, face_embedder=face_embedder)(
        images, prompts, refs)


def _as_bchw(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise TypeError("the differentiable reward takes one [B, 3, H, W] (or [B, H, W, 3]) float tensor in [0, 1]; "
                        f"got {type(images).__name__}{'' if not hasattr(images, 'shape') else list(images.shape)}")
    if images.shape[1] != 3 and images.shape[-1] == 3:
        images = images.permute(0, 3, 1, 2)
    if images.shape[1] != 3:
        raise ValueError(f"images must have 3 channels ([B, 3, H, W] or [B, H, W, 3]), got {list(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1] to carry gradients, got {images.dtype}")
    return images


def _pil_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _module_device(fn: Any) -> torch.device:
    params = getattr(fn, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


__all__ = ["DifferentiableReward", "FaceEmbedder", "differentiable_dims", "differentiable_reward"]
