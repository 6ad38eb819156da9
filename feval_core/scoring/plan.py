"""Which questions an image gets: one rule for every caller (the scorer, differentiable scoring, nodes, rewards).

For each image and wanted dimension, :func:`plan_questions` decides whether the LMM is asked, or the answer
is known without it:

* **correspondence** needs a prompt: none (or only white space) -> not asked, NaN;
* **identity** needs a reference: none -> NaN; an unusable reference -> NaN with ``reference unusable``;
  no face in the image or in the reference -> NaN with the reason (:func:`~feval_core.faces.identity.
  identity_blocker`); zero-shot -> the ArcFace score, without the LMM;
* everything else -> a :class:`Question` for the LMM.

Prompts are cleaned once (:func:`clean_prompt`); references are loaded, padded to the aspect limit and
their faces analysed once per run (:class:`References`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dimensions import (
    DIM_INDEX,
    DIMENSIONS,
    EVAL_PROMPTS,
    LQ_UNUSABLE,
    NEEDS_PROMPT,
    NEEDS_REF,
    NO_PROMPT,
    NO_REFERENCE,
    REFERENCE_UNUSABLE,
    unmet_need,
)
from ..errors import ImageInputError
from ..faces.identity import identity_blocker, identity_missing, zero_shot_identity
from ..inputs.images import broadcast, load_image, pad_to_aspect

MAX_PROMPT_TOKENS = 256


@dataclass
class Reference:
    """A reference face image as every caller uses it: RGB, padded to the aspect limit, its face analysed."""

    image: Any = None  # PIL.Image.Image; None when unusable
    info: Any = None  # FaceInfo, or None without a face model
    error: str | None = None

    @property
    def embedding(self) -> np.ndarray | None:
        return None if self.info is None else self.info.embedding


class References:
    """Reference images, each loaded and analysed once (paths by name, other objects by identity)."""

    def __init__(self, face_encoder: Any | None) -> None:
        self.face_encoder = face_encoder
        self._cache: dict[tuple[str, Any], tuple[Any, Reference]] = {}

    def get(self, ref: Any) -> Reference:
        key = ("path", os.fspath(ref)) if isinstance(ref, (str, os.PathLike)) else ("object", id(ref))
        if key not in self._cache:
            self._cache[key] = (ref, self._load(ref))  # the source is kept so that its id is not reused
        return self._cache[key][1]

    def _load(self, ref: Any) -> Reference:
        try:
            image = pad_to_aspect(load_image(ref))
        except ImageInputError as exc:
            return Reference(error=f"reference unusable: {exc}")
        info = self.face_encoder.analyze(image) if self.face_encoder is not None else None
        return Reference(image, info)


@dataclass(frozen=True)
class Asked:
    """A question in the user's own words and the expert the router picked for it, with its probability.

    ``text`` is shown in the answers as the user wrote it (white space collapsed); ``row_text`` is what the
    model reads (:func:`clean_text`: special-token strings made plain text, cut to the prompt limit)."""

    text: str
    dim: str
    probability: float
    row_text: str


@dataclass
class Question:
    """One row for an image: asked of the LMM, or answered without it (``value``).

    ``dim`` is the expert (and answer prefix and head) that answers; the score goes to column ``column`` of the
    scores, or to the image's answer ``answer`` for a question in the user's words (``text``).
    """

    index: int  # the image's position in its chunk
    dim: str
    prompt: str | None = None
    ref: Reference | None = None
    value: float | None = None  # zero-shot identity: the ArcFace score, no LMM
    text: str | None = None  # the question in the row; None: the evaluation prompt of ``dim``
    column: int | None = None
    answer: int | None = None
    lq: Reference | None = None  # a restoration's low-quality input, shown to the quality row


def line_up(n: int, prompts: Any, refs: Any) -> tuple[list[str | None], list[Any]]:
    """One prompt and one reference per image (or one for all); prompts must be strings or None."""
    prompt_list = broadcast(prompts, n, "prompts")
    bad = next((p for p in prompt_list if p is not None and not isinstance(p, str)), None)
    if bad is not None:
        raise TypeError(f"prompts must be strings (or None), got {type(bad).__name__}: pass one text per image")
    return prompt_list, broadcast_refs(refs, n)


def broadcast_refs(refs: Any, n: int) -> list[Any]:
    """One reference for all images, or one per image (a 4-D batch counts per image)."""
    if hasattr(refs, "ndim") and hasattr(refs, "shape") and refs.ndim == 4 and refs.shape[0] == n and n > 1:
        return list(refs)
    return broadcast(refs, n, "refs")


def clean_text(text: str, tokenizer: Any) -> str:
    """User text as a model input: special-token strings made plain text, white space collapsed, cut to
    :data:`MAX_PROMPT_TOKENS` tokens (questions; prompts go through :func:`clean_prompt`, which warns)."""
    return clean_prompt(text, tokenizer, []) or ""


def clean_prompt(prompt: Any, tokenizer: Any, warns: list[str]) -> str | None:
    """White space collapsed; special token strings made plain text (:func:`~feval_core.model.tokens.
    escape_special`: a word joiner after their first character, so ``<image>`` or ``<|im_start|>`` in a prompt
    stays text); invalid Unicode replaced; cut to :data:`MAX_PROMPT_TOKENS` tokens (with a warning).
    None when nothing is left."""
    from ..model.tokens import escape_special

    if prompt is None:
        return None
    if not isinstance(prompt, str):
        raise TypeError(f"prompts must be strings, got {type(prompt).__name__}")
    prompt = escape_special(" ".join(prompt.split()), tokenizer)
    if not prompt:
        return None
    if not prompt.isascii() and prompt != (fixed := prompt.encode("utf-8", "replace").decode("utf-8")):
        prompt = fixed  # lone surrogates (e.g. undecodable bytes in argv) cannot be tokenized
        warns.append("prompt held characters that are not valid Unicode; they were replaced by '?'")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if len(ids) > MAX_PROMPT_TOKENS:
        prompt = tokenizer.decode(ids[:MAX_PROMPT_TOKENS])
        warns.append(f"prompt truncated to its first {MAX_PROMPT_TOKENS} tokens")
    return prompt


def plan_questions(dims: Sequence[str], prompts: Sequence[Any], refs: Sequence[Any], infos: Sequence[Any], *,
                   indices: Sequence[int], tokenizer: Any, has_face_model: bool, trained: bool,
                   references: References, warnings: list[list[str]], experts: dict[str, str] | None = None,
                   asked: Sequence[Asked] = (), lqs: Sequence[Any] | None = None,
                   lq_images: References | None = None, missing: list[dict[str, str]] | None = None
                   ) -> list[Question]:
    """The questions of images ``indices`` (positions into ``prompts``, ``refs``, ``infos``, ``warnings`` and
    ``lqs``): each of ``dims`` (answered by ``experts[d]``, default ``d`` itself), then each ``asked`` question, in
    image order. Reasons for NaN go to ``warnings[i]``. A row needs what its question's dimension and its expert
    need (a prompt, a reference). A quality row of an image with a low-quality input (``lqs[i]``, a restoration)
    shows that input too; an unusable one makes quality NaN with the reason. ``missing[i]`` (when given) receives
    ``{dimension: reason code}`` for each named dimension left unasked (:data:`~feval_core.dimensions.
    MISSING_REASONS`)."""
    wanted = [(experts.get(d, d) if experts else d, DIM_INDEX[d], None, None) for d in dims]
    wanted += [(a.dim, None, a.row_text, k) for k, a in enumerate(asked)]
    out: list[Question] = []
    for i in indices:
        why = missing[i] if missing is not None else {}
        prompt: list[str | None] = []  # cleaned once per image, when a row needs it
        for expert, column, text, answer in wanted:
            needs = {expert} if column is None else {expert, DIMENSIONS[column]}
            q = Question(i, expert, column=column, answer=answer, text=text)
            if needs & NEEDS_PROMPT:
                if not prompt:
                    prompt.append(clean_prompt(prompts[i], tokenizer, warnings[i]))
                if prompt[0] is None:  # no prompt, no correspondence
                    _unanswered(q, asked, warnings[i], has_prompt=False, has_ref=True)
                    _why(why, q, NO_PROMPT)
                    continue
                q.prompt = prompt[0]
            if column is not None and DIMENSIONS[column] != expert:  # routed elsewhere: still this dimension's question
                q.text = EVAL_PROMPTS[DIMENSIONS[column]].format(prompt=q.prompt or "")
            if needs & NEEDS_REF and not _plan_identity(q, refs[i], infos[i], has_face_model, trained, references,
                                                        warnings[i], asked, why):
                continue
            if "quality" in needs and lqs is not None and lqs[i] is not None and lq_images is not None:
                q.lq = lq_images.get(lqs[i])
                if q.lq.error:
                    warnings[i].append(q.lq.error.replace("reference", "low-quality input", 1))
                    _why(why, q, LQ_UNUSABLE)
                    continue
            out.append(q)
    return out


def _unanswered(q: Question, asked: Sequence[Asked], warns: list[str], *, has_prompt: bool, has_ref: bool) -> None:
    """Say why a question in the user's words gets no score (named dimensions are NaN silently, by design)."""
    if q.answer is not None:
        need = unmet_need(q.dim, has_prompt=has_prompt, has_ref=has_ref)
        warns.append(f"question {asked[q.answer].text!r} went to the {q.dim} expert, which {need}")


def _why(why: dict[str, str], q: Question, reason: str) -> None:
    """Record why a named dimension's question is not asked (the first reason wins)."""
    if q.column is not None:
        why.setdefault(DIMENSIONS[q.column], reason)


def _plan_identity(q: Question, ref: Any, info: Any, has_face_model: bool, trained: bool, references: References,
                   warns: list[str], asked: Sequence[Asked] = (), why: dict[str, str] | None = None) -> bool:
    """Fill in an identity question's reference (and zero-shot value); False when identity is not applicable."""
    why = why if why is not None else {}
    if ref is None:
        _unanswered(q, asked, warns, has_prompt=True, has_ref=False)
        _why(why, q, NO_REFERENCE)
        return False
    q.ref = references.get(ref)
    blocked = q.ref.error or identity_blocker(has_face_model, info, q.ref.info)
    if blocked:
        warns.append(blocked)
        _why(why, q, REFERENCE_UNUSABLE if q.ref.error else identity_missing(has_face_model, info, q.ref.info))
        return False
    if not trained and q.dim == "identity":
        q.value = zero_shot_identity(info, q.ref.info)
    return True
