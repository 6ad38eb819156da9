"""Rewards scored by a ``feval serve`` server: :func:`remote_reward` and :class:`RemoteScorer`.

A :class:`RemoteScorer` has the scorer's ``score(images, prompts, refs, dims)`` and returns the same
:class:`~feval_core.scoring.result.ScoreResult` (the server sends the scorer's rows, reasons included), so every reward
shape takes it as ``scorer=`` — or takes the URL itself: ``ddpo_reward("http://host:8000", weights)``,
``best_of_n(pipe, ..., scorer="http://host:8000")``. Images go as PNG bytes (lossless: the server scores the pixels
the in-process scorer would), split into requests of at most ``max_images`` and sent ``concurrency`` at a time;
the server batches requests from all clients together.

Failures: connection errors, timeouts and 429/502/503/504 answers are retried ``retries`` times with exponential
back-off (a ``Retry-After`` header is honoured); then :class:`RemoteRewardError` says what failed and what to check.
A refused request (400, 401, 413) is not retried. Nothing waits longer than ``timeout`` per try.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from feval_core.dimensions import DIMENSIONS, REFERENCE_UNUSABLE, parse_dims
from feval_core.errors import ImageInputError
from feval_core.inputs.images import expand_inputs
from feval_core.scoring.plan import line_up
from feval_core.scoring.result import ScoreResult
from feval_core.serve.wire import WireError, decode_result, encode_image, encode_request

from .core import Weights, feval_reward

logger = logging.getLogger(__name__)

TOKEN_ENV = "FEVAL_SERVE_TOKEN"
RETRY_STATUS = frozenset({429, 502, 503, 504})


class RemoteRewardError(RuntimeError):
    """The reward server could not score a request; the message says why and what to check."""


@dataclass
class _Config:
    dims: tuple[str, ...] = DIMENSIONS


@dataclass
class RemoteScorer:
    """A ``feval serve`` server as a scorer (thread-safe: every call is its own set of requests)."""

    url: str
    token: str | None = None  # default: $FEVAL_SERVE_TOKEN
    timeout: float = 120.0  # seconds per try
    retries: int = 3  # tries after the first
    backoff: float = 0.5  # seconds before the first retry, doubled each time
    max_images: int = 16  # images per request
    concurrency: int = 4  # requests in flight per call
    image_format: str = "PNG"
    config: _Config = field(default_factory=_Config, repr=False)

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        self.url = self.url.rstrip("/")
        self.token = self.token or os.environ.get(TOKEN_ENV) or None
        if self.max_images < 1 or self.concurrency < 1 or self.retries < 0 or self.timeout <= 0:
            raise ValueError("max_images and concurrency must be >= 1, retries >= 0 and timeout > 0")

    def score(self, images: Any, prompts: Any = None, refs: Any = None, dims: Any = None, *, batch_size: int = 8,
              **_: Any) -> ScoreResult:
        """Score on the server; the same result as :meth:`FEvalScorer.score` there (``batch_size`` is the server's)."""
        items = expand_inputs(images)
        n = len(items)
        prompt_list, ref_list = line_up(n, prompts, refs)
        wanted = parse_dims(dims)
        encoded, errors = [], {}
        for k, item in enumerate(items):
            try:
                encoded.append(encode_image(item, self.image_format))
            except ImageInputError as err:
                encoded.append(None)
                errors[k] = str(err)
        references, ref_index, bad_refs = _references(ref_list, self.image_format)
        send = [k for k in range(n) if encoded[k] is not None]
        chunks = [send[i:i + self.max_images] for i in range(0, len(send), self.max_images)]

        def run(chunk: list[int]) -> ScoreResult:
            used = sorted({ref_index[k] for k in chunk if ref_index[k] is not None})
            local = {r: j for j, r in enumerate(used)}
            payload = encode_request([encoded[k] for k in chunk], [prompt_list[k] for k in chunk],
                                     [references[r] for r in used],
                                     [None if ref_index[k] is None else local[ref_index[k]] for k in chunk], wanted)
            return decode_result(self._post(payload), [items[k].name for k in chunk], wanted)

        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(chunks)))) as pool:
            parts = list(pool.map(run, chunks))
        return _assemble(n, [it.name for it in items], send, parts, errors, bad_refs, ref_list, wanted)

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        last = "no try made"
        for attempt in range(self.retries + 1):
            wait = self.backoff * 2 ** attempt
            try:
                req = urllib.request.Request(f"{self.url}/predict", data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    doc = json.loads(resp.read())
                if isinstance(doc, dict) and "error" in doc:
                    raise RemoteRewardError(f"reward server {self.url} refused the request: {doc['error']}")
                return doc
            except urllib.error.HTTPError as err:
                detail = _detail(err)
                if err.code not in RETRY_STATUS:
                    raise RemoteRewardError(f"reward server {self.url} answered {err.code}: {detail}") from None
                last = f"HTTP {err.code}: {detail}"
                wait = max(wait, _retry_after(err))
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
                last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            if attempt < self.retries:
                logger.debug("reward server %s: %s; retry %d/%d in %.1fs", self.url, last, attempt + 1, self.retries,
                             wait)
                time.sleep(wait)
        raise RemoteRewardError(f"reward server {self.url} did not answer after {self.retries + 1} tries (last: "
                                f"{last}); check that `feval serve` runs there and is reachable, or raise retries or "
                                "timeout")


def _references(refs: Sequence[Any], fmt: str) -> tuple[list[str], list[int | None], dict[int, str]]:
    """Each distinct reference encoded once (paths by name, objects by identity); per image its index; per image
    the error of a reference that cannot be read."""
    encoded: list[str] = []
    index: list[int | None] = []
    bad: dict[int, str] = {}
    seen: dict[tuple[str, Any], int | str] = {}
    for k, ref in enumerate(refs):
        if ref is None:
            index.append(None)
            continue
        key = ("path", os.fspath(ref)) if isinstance(ref, (str, os.PathLike)) else ("object", id(ref))
        if key not in seen:
            try:
                encoded.append(encode_image(ref, fmt))
                seen[key] = len(encoded) - 1
            except ImageInputError as err:
                seen[key] = str(err)
        if isinstance(seen[key], str):
            bad[k] = seen[key]
            index.append(None)
        else:
            index.append(seen[key])
    return encoded, index, bad


def _assemble(n: int, names: list[str], sent: list[int], parts: list[ScoreResult], errors: dict[int, str],
              bad_refs: dict[int, str], refs: Sequence[Any], dims: tuple[str, ...]) -> ScoreResult:
    import torch

    from feval_core.dimensions import IMAGE_ERROR

    got = ScoreResult.concat(parts) if parts else None
    row = {k: j for j, k in enumerate(sent)}
    scores = torch.full((n, len(DIMENSIONS)), math.nan)
    faces: list[int | None] = [None] * n
    errs: list[str | None] = [None] * n
    warns: list[list[str]] = [[] for _ in range(n)]
    missing: list[dict[str, str]] = [dict.fromkeys(DIMENSIONS, IMAGE_ERROR) for _ in range(n)]
    for k in range(n):
        if k in errors:
            errs[k] = errors[k]
            continue
        j = row[k]
        scores[k], faces[k], errs[k] = got.scores[j], got.faces[j], got.errors[j]
        warns[k], missing[k] = list(got.warnings[j]), dict(got.missing[j])
        if k in bad_refs and "identity" in dims:
            warns[k].append(f"reference unusable: {bad_refs[k]}")
            missing[k]["identity"] = REFERENCE_UNUSABLE
    return ScoreResult(scores, names, faces, errs, warns, dims, [], missing)


def _detail(err: urllib.error.HTTPError) -> str:
    try:
        doc = json.loads(err.read() or b"{}")
        return str(doc.get("detail", doc)) if isinstance(doc, dict) else str(doc)
    except (ValueError, OSError):
        return err.reason or ""


def _retry_after(err: urllib.error.HTTPError) -> float:
    try:
        return float(err.headers.get("Retry-After", 0))
    except (TypeError, ValueError):
        return 0.0


class RemoteReward:
    """What :func:`remote_reward` returns: ``reward(images, prompts, refs)`` like :func:`~reward.core.feval_reward`,
    and the other shapes on the same server (:meth:`ddpo`, :meth:`flow_grpo`, :meth:`best_of_n`)."""

    def __init__(self, scorer: RemoteScorer, weights: Weights = None) -> None:
        self.scorer = scorer
        self.weights = weights

    def __call__(self, images: Any, prompts: Any = None, refs: Any = None, **kwargs: Any) -> Any:
        return feval_reward(images, prompts, refs, self.weights, self.scorer, **kwargs)

    def ddpo(self, **kwargs: Any) -> Any:
        """A ``trl.DDPOTrainer`` reward function (see :func:`~reward.ddpo.ddpo_reward`)."""
        from .ddpo import ddpo_reward

        return ddpo_reward(self.scorer, self.weights, **kwargs)

    def flow_grpo(self, **kwargs: Any) -> Any:
        """A Flow-GRPO reward function (see :func:`~reward.flow_grpo.flow_grpo_reward`)."""
        from .flow_grpo import flow_grpo_reward

        return flow_grpo_reward(self.scorer, self.weights, **kwargs)

    def best_of_n(self, pipe: Any, prompt: str, n: int, **kwargs: Any) -> Any:
        """Best-of-N over a diffusers pipeline (see :func:`~reward.best_of_n.best_of_n`)."""
        from .best_of_n import best_of_n

        return best_of_n(pipe, prompt, n, weights=self.weights, scorer=self.scorer, **kwargs)


def remote_reward(url: str, weights: Weights = None, *, token: str | None = None, timeout: float = 120.0,
                  retries: int = 3, backoff: float = 0.5, max_images: int = 16, concurrency: int = 4) -> RemoteReward:
    """A reward scored by the ``feval serve`` server at ``url``, with retries and timeouts (see the module doc)."""
    return RemoteReward(RemoteScorer(url, token=token, timeout=timeout, retries=retries, backoff=backoff,
                                     max_images=max_images, concurrency=concurrency), weights)


__all__ = ["RemoteReward", "RemoteRewardError", "RemoteScorer", "WireError", "remote_reward"]
