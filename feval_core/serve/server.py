"""``feval serve``: the scorer behind HTTP on LitServe, for trainers whose GPUs are busy with the generator.

Why LitServe (``pip install "feval[serve]"``): a maintained serving library (Lightning AI, Apache-2.0) whose
inference workers are separate processes, one per device (``devices="auto"``: one replica per GPU), with dynamic
batching across requests (``max_batch_size`` requests, waiting at most ``batch_timeout`` seconds to fill a batch),
request timeouts and middlewares, in a few lines; it runs on CPU too. Ray Serve does the same across machines but
brings a cluster runtime; a hand-written batching loop is what this replaces.

What this module adds: :class:`FEvalAPI` (decode the wire format of :mod:`.wire`, score each batch of requests in one
call per dimension set, answer each request with its own rows) and :class:`Guard`, an ASGI middleware in front of
the endpoint that refuses at once what would otherwise wait or crash: a wrong token (401), a body over
``max_request_bytes`` (413), more than ``max_queue`` requests in flight (503 with ``Retry-After``).
"""

from __future__ import annotations

import hmac
import json
import logging
import multiprocessing as mp
import time
from dataclasses import dataclass
from typing import Any

from ..dimensions import IMAGE_ERROR, REFERENCE_UNUSABLE
from ..errors import ConfigError
from ..scoring.result import ScoreResult
from .wire import ScoreRequest, WireError, encode_result, parse_request

logger = logging.getLogger(__name__)

try:  # the server needs the ``serve`` extra; the wire format and the client do not
    import litserve as ls
except ImportError:  # pragma: no cover - exercised only without the extra
    ls = None

PREDICT_PATH = "/predict"


@dataclass
class ServeConfig:
    """How ``feval serve`` runs (every field is a ``feval serve`` option)."""

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    accelerator: str = "auto"  # "cuda", "cpu" or "auto"
    devices: int | str = "auto"  # GPUs to use, one replica each ("auto": all visible)
    workers_per_device: int = 1
    max_batch_size: int = 8  # requests scored together
    batch_timeout: float = 0.01  # seconds to wait for more requests to fill a batch
    batch_size: int = 16  # images per model call inside a batch
    max_images: int = 64  # images per request
    max_request_bytes: int = 64 * 2**20
    max_queue: int = 256  # requests in flight (queued or being scored) before 503
    timeout: float = 120.0  # seconds a request may wait and run before 504
    token: str | None = None  # clients send "Authorization: Bearer <token>"

    def __post_init__(self) -> None:
        for name in ("port", "workers_per_device", "max_batch_size", "batch_size", "max_images", "max_request_bytes",
                     "max_queue"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_timeout < 0 or self.timeout <= 0:
            raise ConfigError(f"batch_timeout must be >= 0 and timeout > 0, got {self.batch_timeout}, {self.timeout}")
        if self.token is not None and not self.token.strip():
            raise ConfigError("token is empty; give a secret or leave it out")


def _require_litserve() -> Any:
    if ls is None:
        raise ConfigError('feval serve needs LitServe: pip install "feval[serve]" (or pip install litserve)')
    return ls


class Guard:
    """ASGI middleware: token, body size and in-flight limit, answered before the request reaches the queue."""

    def __init__(self, app: Any, *, token: str | None, max_bytes: int, max_queue: int, in_flight: Any) -> None:
        self.app = app
        self.token = token
        self.max_bytes = max_bytes
        self.max_queue = max_queue
        self.in_flight = in_flight  # multiprocessing.Value shared by the API server processes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") != PREDICT_PATH:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.token is not None and not hmac.compare_digest(headers.get("authorization", ""),
                                                              f"Bearer {self.token}"):
            await _answer(send, 401, "missing or wrong token: send the header 'Authorization: Bearer <token>' with "
                                     "the token feval serve was started with")
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            if int(length) <= 4 * self.max_bytes:  # read and drop it, so that the client reads the answer
                await _drain(receive)
            await _answer(send, 413, f"request body of {length} bytes is over the server's limit of {self.max_bytes}; "
                                     "send fewer images per request")
            return
        with self.in_flight.get_lock():
            busy = self.in_flight.value >= self.max_queue
            if not busy:
                self.in_flight.value += 1
        if busy:
            await _answer(send, 503, f"server busy: {self.max_queue} requests in flight; retry later, or start the "
                                     "server with a larger --max-queue or more replicas", retry_after=1)
            return
        try:
            await self.app(scope, _limited(receive, self.max_bytes), send)
        except _TooLarge:
            await _answer(send, 413, f"request body over the server's limit of {self.max_bytes} bytes; send fewer "
                                     "images per request")
        finally:
            with self.in_flight.get_lock():
                self.in_flight.value -= 1


class _TooLarge(Exception):
    pass


def _limited(receive: Any, max_bytes: int) -> Any:
    seen = 0

    async def wrapped() -> dict:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > max_bytes:
            raise _TooLarge
        return message

    return wrapped


async def _drain(receive: Any) -> None:
    while True:
        message = await receive()
        if message.get("type") != "http.request" or not message.get("more_body"):
            return


async def _answer(send: Any, status: int, detail: str, retry_after: int | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class FEvalAPI(ls.LitAPI if ls is not None else object):  # type: ignore[misc]
    """LitServe API: each worker loads its own :class:`~feval_core.scoring.scorer.FEvalScorer` on its device."""

    def __init__(self, config: ServeConfig) -> None:
        _require_litserve()
        super().__init__(max_batch_size=config.max_batch_size, batch_timeout=config.batch_timeout,
                         api_path=PREDICT_PATH)
        self.serve_config = config
        self.scorer: Any = None

    def setup(self, device: str) -> None:
        from ..scoring.scorer import FEvalScorer

        self.scorer = FEvalScorer.from_pretrained(self.serve_config.model, device=device)
        logger.info("feval serve: %s loaded on %s", self.serve_config.model, device)

    def decode_request(self, request) -> ScoreRequest | str:  # noqa: ANN001 - LitServe reads the JSON body only
        """The parsed JSON body -> :class:`ScoreRequest`, or the message of a malformed request."""  # unannotated
        try:
            return parse_request(request, max_images=self.serve_config.max_images)
        except WireError as err:
            return str(err)  # answered as this request's error; the other requests of the batch still score

    def batch(self, inputs: list[Any]) -> list[Any]:
        return list(inputs)

    def predict(self, batch: list[ScoreRequest | str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any] | None] = [None] * len(batch)
        groups: dict[tuple[str, ...], list[int]] = {}
        for k, req in enumerate(batch):
            if isinstance(req, str):
                out[k] = {"error": req}
            else:
                groups.setdefault(req.dims, []).append(k)
        for dims, members in groups.items():  # one scoring call per set of dimensions
            t0 = time.perf_counter()
            results = score_requests(self.scorer, [batch[k] for k in members], dims, self.serve_config.batch_size)
            logger.debug("scored %d requests (%d images) in %.3f s", len(members),
                         sum(len(batch[k].images) for k in members), time.perf_counter() - t0)
            for k, res in zip(members, results):
                out[k] = encode_result(res)
        return out  # type: ignore[return-value]

    def unbatch(self, output: list[Any]) -> list[Any]:
        return list(output)

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def score_requests(scorer: Any, requests: list[ScoreRequest], dims: tuple[str, ...], batch_size: int
                   ) -> list[ScoreResult]:
    """Score several requests' images in one call and give each request its rows. Images that could not be
    decoded get error rows; an undecodable reference makes identity ``reference unusable`` for its images."""
    images, prompts, refs, where = [], [], [], []
    for r, req in enumerate(requests):
        for i, im in enumerate(req.images):
            if not isinstance(im, str):
                images.append(im)
                prompts.append(req.prompts[i])
                refs.append(req.refs[i] if not isinstance(req.refs[i], str) else None)
                where.append((r, i))
    scored = scorer.score(images, prompts=prompts, refs=refs, dims=dims, batch_size=batch_size) if images else None
    rows = {pos: k for k, pos in enumerate(where)}
    out = []
    for r, req in enumerate(requests):
        out.append(_request_result(req, scored, [rows.get((r, i)) for i in range(len(req.images))], dims))
    return out


def _request_result(req: ScoreRequest, scored: ScoreResult | None, rows: list[int | None], dims: tuple[str, ...]
                    ) -> ScoreResult:
    import torch

    from ..dimensions import DIMENSIONS

    n = len(rows)
    scores = torch.full((n, len(DIMENSIONS)), float("nan"))
    faces: list[int | None] = [None] * n
    errors: list[str | None] = [None] * n
    warns: list[list[str]] = [[] for _ in range(n)]
    missing: list[dict[str, str]] = [dict.fromkeys(DIMENSIONS, IMAGE_ERROR) for _ in range(n)]
    for i, k in enumerate(rows):
        if k is None:
            errors[i] = req.images[i]
            continue
        scores[i] = scored.scores[k]
        faces[i], errors[i] = scored.faces[k], scored.errors[k]
        warns[i] = list(scored.warnings[k])
        missing[i] = dict(scored.missing[k])
        if isinstance(req.refs[i], str) and "identity" in dims:
            warns[i].append(f"reference unusable: {req.refs[i]}")
            missing[i]["identity"] = REFERENCE_UNUSABLE
    return ScoreResult(scores, [""] * n, faces, errors, warns, dims, [], missing)


def build_server(config: ServeConfig) -> Any:
    """The LitServe server for ``config`` (call ``.run(...)`` on it, or use :func:`serve`)."""
    litserve = _require_litserve()
    in_flight = mp.get_context("fork").Value("i", 0)
    guard = (Guard, {"token": config.token, "max_bytes": config.max_request_bytes, "max_queue": config.max_queue,
                     "in_flight": in_flight})
    return litserve.LitServer(FEvalAPI(config), accelerator=config.accelerator, devices=config.devices,
                              workers_per_device=config.workers_per_device, timeout=config.timeout,
                              middlewares=[guard], disable_openapi_url=True, fast_queue=True)


def serve(config: ServeConfig) -> None:
    """Run the server until it is stopped (Ctrl-C or SIGTERM: both shut its worker processes down too)."""
    import os
    import signal

    main = os.getpid()

    def _stop(signum: int, frame: Any) -> None:
        if os.getpid() != main:  # a forked API worker inherited this handler: die as SIGTERM says
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise KeyboardInterrupt  # LitServe's graceful shutdown stops the API and inference workers

    signal.signal(signal.SIGTERM, _stop)
    server = build_server(config)
    logger.info("feval serve: %s on http://%s:%d%s (batches of up to %d requests, %d images each)", config.model,
                config.host, config.port, PREDICT_PATH, config.max_batch_size, config.max_images)
    server.run(host=config.host, port=config.port, num_api_servers=1, generate_client_file=False,
               log_level="warning")
