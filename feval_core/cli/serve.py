"""``feval serve``: score over HTTP (LitServe), one replica per GPU, dynamic batching across requests.

Clients: ``reward.remote_reward("http://host:port", weights)`` or any reward shape with ``scorer="http://host:port"``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from .checks import UsageError, check_device, check_min, check_model
from .main import EXIT_OK

TOKEN_ENV = "FEVAL_SERVE_TOKEN"


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text)
    p.add_argument("--model", required=True, help="feval checkpoint folder or hub id (or a plain VLM: zero-shot)")
    p.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "0.0.0.0", "::"],
                   help="address to listen on (default: this machine only; 0.0.0.0 for the network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto",
                   help="cuda (one replica per visible GPU), cpu, or auto (cuda when available)")
    p.add_argument("--gpus", default="auto", help="how many GPUs get a replica (default: all visible)")
    p.add_argument("--workers-per-device", type=int, default=1, help="replicas per device (default 1)")
    p.add_argument("--max-batch-size", type=int, default=8, help="requests scored together (dynamic batching)")
    p.add_argument("--batch-timeout", type=float, default=0.01,
                   help="seconds to wait for more requests to fill a batch (default 0.01)")
    p.add_argument("--batch-size", type=int, default=16, help="images per model call (default 16)")
    p.add_argument("--max-images", type=int, default=64, help="images per request (default 64)")
    p.add_argument("--max-request-mb", type=float, default=64.0, help="largest request body in MiB (default 64)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests in flight before the server answers 503 at once (default 256)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a request may wait and run (504 after)")
    p.add_argument("--token", help=f"require 'Authorization: Bearer TOKEN' (default: ${TOKEN_ENV}, else none)")
    p.set_defaults(func=cmd_serve)
    return p


def serve_config(args: argparse.Namespace) -> Any:
    """A :class:`~feval_core.serve.server.ServeConfig` from checked arguments."""
    from ..serve.server import ServeConfig

    check_model("--model", args.model)
    for flag, value in (("--port", args.port), ("--workers-per-device", args.workers_per_device),
                        ("--max-batch-size", args.max_batch_size), ("--batch-size", args.batch_size),
                        ("--max-images", args.max_images), ("--max-queue", args.max_queue)):
        check_min(flag, value)
    if args.batch_timeout < 0 or args.timeout <= 0 or args.max_request_mb <= 0:
        raise UsageError("--batch-timeout must be >= 0, --timeout and --max-request-mb > 0")
    if not 1024 <= args.port <= 65535:
        raise UsageError(f"--port must be 1024..65535, got {args.port}")
    if args.device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device {args.device}: use cuda, cpu or auto (--gpus chooses how many GPUs)")
    if args.device == "cuda":
        check_device("cuda")
    gpus: int | str = args.gpus
    if gpus != "auto":
        if not str(gpus).isdigit() or int(gpus) < 1:
            raise UsageError(f"--gpus must be a number >= 1 or auto, got {gpus}")
        gpus = int(gpus)
    token = args.token or os.environ.get(TOKEN_ENV) or None
    return ServeConfig(model=args.model, host=args.host, port=args.port, accelerator=args.device,
                       devices=1 if args.device == "cpu" else gpus, workers_per_device=args.workers_per_device,
                       max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout,
                       batch_size=args.batch_size, max_images=args.max_images,
                       max_request_bytes=int(args.max_request_mb * 2**20), max_queue=args.max_queue,
                       timeout=args.timeout, token=token)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serve.server import serve

    serve(serve_config(args))
    return EXIT_OK
