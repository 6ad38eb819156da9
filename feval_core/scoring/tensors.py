"""Scores with gradients to the pixels: the scorer's rules on ``[B,3,H,W]`` tensors (ReFL, DRaFT, AlignProp).

:class:`TensorScorer` asks the same questions as :class:`~feval_core.scoring.scorer.FEvalScorer` (one plan,
:mod:`~feval_core.scoring.plan`), builds the token layout with the processor (it only needs image sizes) and
the ``pixel_values`` with torch only (:func:`~feval_core.model.preprocess.pixel_values_from_tensors`).

What carries gradients, and why:

* **quality, authenticity, correspondence** — always: the score is a smooth function of the last hidden
  state, which sees the pixels through the vision tower;
* **identity, trained checkpoint** — yes: the identity expert reads the image through the vision tower (the
  reference is a constant);
* **identity, zero-shot** — no: it is the cosine of two ArcFace embeddings from ONNX Runtime, outside
  autograd; its value is still returned. A ``face_embedder`` (a torch port of the recognizer) makes it
  differentiable: faces are cropped with :func:`~feval_core.faces.align.aligned_face_crops` and embedded in
  torch.

Face *detection* always runs without gradients (it is piecewise constant anyway).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..dimensions import DIMENSIONS, parse_dims
from ..faces.align import aligned_face_crops
from ..faces.identity import NO_FACE_IN_IMAGE, face_notes
from ..inputs.images import aspect_padding
from ..model.preprocess import pixel_values_from_tensors
from ..model.rows import Row
from .plan import Question, Reference, References, line_up, plan_questions

if TYPE_CHECKING:  # pragma: no cover
    from .scorer import FEvalScorer

logger = logging.getLogger(__name__)

FaceEmbedder = Callable[[torch.Tensor], torch.Tensor]
"""``[N, 3, 112, 112]`` ArcFace-aligned RGB crops in [0, 1] -> ``[N, D]`` embeddings (a torch module)."""


class TensorScorer:
    """``scores(images, prompts, refs) -> [B, 4]`` with gradients w.r.t. ``images`` (NaN where not applicable).

    Uses the scorer's frozen model as is (no copy); calls are serialised with the scorer's lock. As in the
    scorer, each image goes through the vision tower once for all its dimensions (:attr:`vision_per_image`;
    ``False`` runs it once per (image, dimension) row, for comparison).
    """

    def __init__(self, scorer: FEvalScorer, face_embedder: FaceEmbedder | None = None) -> None:
        self.scorer = scorer
        self.face_embedder = face_embedder
        self.vision_per_image = True

    @property
    def differentiable_dims(self) -> tuple[str, ...]:
        """The dimensions whose score carries gradients to the pixels (see the module doc)."""
        dims = tuple(self.scorer.config.dims)
        if self.scorer.model.trained or self.face_embedder is not None:
            return dims
        return tuple(d for d in dims if d != "identity")

    def scores(self, images: torch.Tensor, prompts: Any = None, refs: Any = None, dims: Any = None, *,
               faces: Sequence[Any] | None = None, warnings: list[list[str]] | None = None,
               missing: list[dict[str, str]] | None = None) -> torch.Tensor:
        """``[B, 4]`` scores in :data:`DIMENSIONS` order, differentiable w.r.t. ``images``.

        ``faces``: one ``FaceInfo`` (or None) per image from :meth:`detect_faces`, to hold detections fixed
        across gradient steps; by default faces are detected now. ``warnings`` receives why a score is NaN, and
        ``missing`` (one dict per image) its reason code (see :attr:`ScoreResult.missing`).
        """
        images = as_bchw(images)
        n = images.shape[0]
        if faces is not None and len(faces) != n:
            raise ValueError(f"got {n} images but {len(faces)} face detections; pass one FaceInfo (or None) per image")
        prompt_list, ref_list = line_up(n, prompts, refs)
        wanted = tuple(d for d in parse_dims(dims) if d in self.scorer.config.dims)
        warns = warnings if warnings is not None else [[] for _ in range(n)]
        sc = self.scorer
        with sc._lock:
            infos = list(faces) if faces is not None else self.detect_faces(images)
            for i, info in enumerate(infos):
                if info is not None and not info.has_face:
                    warns[i].append(NO_FACE_IN_IMAGE)
            references = References(sc.face_encoder)
            questions = plan_questions(wanted, prompt_list, ref_list, infos, indices=range(n),
                                       tokenizer=sc.model.processor.tokenizer,
                                       has_face_model=sc.face_encoder is not None,
                                       trained=sc.model.trained, references=references, warnings=warns,
                                       missing=missing)
            for w in warns:
                w[:] = face_notes(w)
            face_vecs = self._face_vectors(images, infos)
            ref_vecs: dict[int, torch.Tensor | None] = {}
            entries: list[tuple[Question, torch.Tensor]] = []
            for q in questions:
                if q.value is not None:
                    entries.append((q, self._zero_shot_identity(q, face_vecs[q.index], ref_vecs)))
            asked = [q for q in questions if q.value is None]
            if asked:
                values = self._forward(images, asked, infos, face_vecs, ref_vecs)
                entries += list(zip(asked, values.unbind(0)))
        if any(warns):
            logger.debug("tensor scores: %s", "; ".join(sorted({w for ws in warns for w in ws})))
        out = torch.full((n, len(DIMENSIONS)), float("nan"), dtype=torch.float32, device=images.device)
        if entries:
            ii = torch.tensor([q.index for q, _ in entries], device=images.device)
            jj = torch.tensor([q.column for q, _ in entries], device=images.device)
            vals = torch.stack([v.float().to(images.device).reshape(()) for _, v in entries])
            out = out.index_put((ii, jj), vals)
        return out

    # -- the LMM ------------------------------------------------------------------------------
    def _forward(self, images: torch.Tensor, asked: list[Question], infos: Sequence[Any],
                 face_vecs: list[torch.Tensor | None], ref_vecs: dict[int, torch.Tensor | None]) -> torch.Tensor:
        model = self.scorer.model
        per_image = {i: pad_tensor_to_aspect(images[i]) for i in dict.fromkeys(q.index for q in asked)}
        # one placeholder per image (or per row, the old way, when ``vision_per_image`` is off): rows that share
        # it share the processor's layout and one run of the vision tower (score_rows goes by object identity)
        shared = {i: Image.new("RGB", (p.shape[-1], p.shape[-2])) for i, p in per_image.items()}
        padded = [per_image[q.index] for q in asked]
        rows = [Row(shared[q.index] if self.vision_per_image else Image.new("RGB", (p.shape[-1], p.shape[-2])),
                    q.dim, prompt=q.prompt, ref=q.ref.image if q.ref else None,
                    face=None if infos[q.index] is None else infos[q.index].embedding,
                    ref_face=q.ref.embedding if q.ref else None, question=q.text) for q, p in zip(asked, padded)]
        if not model.can_share_vision:
            return self._forward_collated(rows, asked, padded, images)
        prepared: dict[int, Any] = {}
        for row, p in zip(rows, padded):
            if row.ref is not None and id(row.ref) not in prepared:
                prepared[id(row.ref)] = model.prepare_image(row.ref)  # a constant: the processor's own pixels
            if id(row.image) not in prepared:
                prepared[id(row.image)] = self._prepared_tensor(row.image, p.to(images.dtype))
        faces = None
        if self.face_embedder is not None and model.num_face_tokens:
            faces = self._face_tensor(asked, [(self._ref_vector(q.ref, ref_vecs), face_vecs[q.index]) for q in asked],
                                      None)
        return model.scores(model.score_rows(rows, prepared, bucket=False, faces=faces))

    def _prepared_tensor(self, placeholder: Image.Image, image: torch.Tensor) -> Any:
        """The processor's token layout for an image of this size, with ``pixel_values`` from torch (gradients)."""
        model = self.scorer.model
        prepared = model.prepare_image(placeholder)
        pv = pixel_values_from_tensors(model.processor.image_processor, [image])
        for key, value in pv.items():
            ref = prepared.pixels.get(key)
            if ref is None or tuple(ref.shape) != tuple(value.shape) or (key != "pixel_values"
                                                                           and not torch.equal(ref, value.cpu())):
                raise RuntimeError(f"torch preprocessing gave {key} of shape {list(value.shape)}, the processor "
                                   f"{None if ref is None else list(ref.shape)}; this processor configuration is not "
                                   "supported")
        return type(prepared)(prepared.ids, {**prepared.pixels, **pv}, prepared.num_tokens)

    def _forward_collated(self, rows: list[Row], asked: list[Question], padded: list[torch.Tensor],
                          images: torch.Tensor) -> torch.Tensor:
        """Backbones whose vision tower cannot run on its own: the processor's layout, torch pixel values."""
        model = self.scorer.model
        batch = model.collate(rows)
        ordered: list[torch.Tensor] = []
        for q, p in zip(asked, padded):  # the processor's image order: the reference first in identity rows
            if q.ref is not None:
                ordered.append(_pil_tensor(q.ref.image).to(images.device, images.dtype))
            ordered.append(p)
        pv = pixel_values_from_tensors(model.processor.image_processor, ordered)
        if tuple(pv["pixel_values"].shape) != tuple(batch.inputs["pixel_values"].shape):
            raise RuntimeError(f"torch preprocessing made pixel_values of shape {list(pv['pixel_values'].shape)}, "
                               f"the processor {list(batch.inputs['pixel_values'].shape)}; this processor "
                               "configuration is not supported")
        batch = batch.to(model.device)
        batch.inputs["pixel_values"] = pv["pixel_values"].to(model.device, model.dtype)
        return model.scores(model(batch))

    # -- faces --------------------------------------------------------------------------------
    def detect_faces(self, images: torch.Tensor) -> list[Any]:
        """Each image's ``FaceInfo`` (None without a face model), found on its 8-bit copy without gradients."""
        images = as_bchw(images)
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

    def _ref_vector(self, ref: Reference | None, cache: dict[int, torch.Tensor | None]) -> torch.Tensor | None:
        """The reference's ``face_embedder`` vector (a constant), once per call."""
        if ref is None or self.face_embedder is None:
            return None
        if id(ref) not in cache:
            vec = None
            if ref.info is not None and ref.info.kps is not None:
                with torch.no_grad():
                    crop = aligned_face_crops(_pil_tensor(ref.image).unsqueeze(0), [ref.info.kps])
                    vec = self.face_embedder(crop.to(_module_device(self.face_embedder)))[0]
                    vec = vec / vec.norm().clamp(min=1e-12)
            cache[id(ref)] = vec
        return cache[id(ref)]

    def _zero_shot_identity(self, q: Question, face_vec: torch.Tensor | None,
                            cache: dict[int, torch.Tensor | None]) -> torch.Tensor:
        """The planned ArcFace score; with ``face_embedder``, the same formula on its vectors, with gradients."""
        ref_vec = self._ref_vector(q.ref, cache)
        if face_vec is None or ref_vec is None:
            return torch.tensor(float(q.value))
        return 100.0 * (face_vec * ref_vec.to(face_vec.device)).sum().clamp(0.0, 1.0)

    def _face_tensor(self, asked: list[Question], slots: list[tuple[torch.Tensor | None, torch.Tensor | None]],
                     constant: torch.Tensor | None) -> torch.Tensor:
        """Face vectors in token order, the image's own face from ``face_embedder`` (with gradients)."""
        model = self.scorer.model
        dim = model.config.face_dim
        vecs: list[torch.Tensor] = []
        for q, (ref_vec, face_vec) in zip(asked, slots):
            for v in ((ref_vec, face_vec) if q.dim == "identity" else (face_vec,)):
                if v is not None and v.numel() != dim:
                    raise ValueError(f"face_embedder gives {v.numel()}-d embeddings; this checkpoint's projector "
                                     f"takes {dim}-d (ArcFace) embeddings")
                vecs.append(v.reshape(dim).float().to(model.device) if v is not None
                            else torch.zeros(dim, device=model.device))
        faces = torch.stack(vecs)
        if constant is not None and constant.shape != faces.shape:
            raise RuntimeError(f"{faces.shape[0]} face vectors for {constant.shape[0]} face slots")
        return faces


def as_bchw(images: torch.Tensor) -> torch.Tensor:
    """``[B,3,H,W]`` or ``[B,H,W,3]`` float tensor in [0, 1] -> ``[B,3,H,W]``; anything else is refused."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise TypeError("differentiable scoring takes one [B, 3, H, W] (or [B, H, W, 3]) float tensor in [0, 1]; "
                        f"got {type(images).__name__}{'' if not hasattr(images, 'shape') else list(images.shape)}")
    if images.shape[1] != 3 and images.shape[-1] == 3:
        images = images.permute(0, 3, 1, 2)
    if images.shape[1] != 3:
        raise ValueError(f"images must have 3 channels ([B, 3, H, W] or [B, H, W, 3]), got {list(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1] to carry gradients, got {images.dtype}")
    return images


def pad_tensor_to_aspect(image: torch.Tensor) -> torch.Tensor:
    """``[3,H,W]`` padded with black, centred, like :func:`~feval_core.inputs.images.pad_to_aspect` (gradients
    flow through)."""
    pad = aspect_padding(int(image.shape[-1]), int(image.shape[-2]))
    if pad is None:
        return image
    new_w, new_h, left, top = pad
    w, h = int(image.shape[-1]), int(image.shape[-2])
    return F.pad(image, (left, new_w - w - left, top, new_h - h - top))


def _pil_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _module_device(fn: Any) -> torch.device:
    params = getattr(fn, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")
