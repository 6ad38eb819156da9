"""A ``feval serve`` process for tests and benchmarks, and a load driver (many concurrent clients, timed calls).

The server runs as ``python -m feval_core.cli serve`` in its own process group (so stopping it stops its LitServe
workers too); its output goes to a log file that :meth:`ServerProcess.log_tail` shows when it fails to start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port nothing listens on now (for a test server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """A running ``feval serve``: its URL, its process and its log file."""

    url: str
    process: subprocess.Popen
    log: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Wait until ``/health`` says ok; raise with the log when the process dies or the time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"feval serve exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if resp.read() == b"ok":
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"feval serve not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Send ``sig`` to the server's process group; SIGKILL what is left after ``timeout`` seconds."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
        try:  # workers left behind by a hard kill
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_server(model: str | Path, *args: str, port: int | None = None, env: dict[str, str] | None = None,
                 cwd: str | Path | None = None) -> ServerProcess:
    """Start ``feval serve --model model --port port args...`` on this machine (not waiting for it)."""
    port = port or free_port()
    log = Path(tempfile.mkstemp(prefix="feval-serve-", suffix=".log")[1])
    cmd = [sys.executable, "-m", "feval_core.cli", "serve", "--model", str(model), "--port", str(port), *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                cwd=cwd, start_new_session=True)
    return ServerProcess(f"http://127.0.0.1:{port}", proc, log)


@dataclass
class LoadResult:
    """What :func:`run_clients` measured: per call its result (or exception) and latency, and the wall time."""

    results: list[Any]
    latencies: list[float]
    wall: float
    errors: list[BaseException] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def run_clients(call: Callable[[Any], Any], jobs: Sequence[Any], clients: int, *, join_timeout: float = 600.0
                ) -> LoadResult:
    """``clients`` threads take ``jobs`` in turn and run ``call(job)``, all starting together; each job's result
    (or the exception it raised) lands at the job's position, with its latency."""
    results: list[Any] = [None] * len(jobs)
    latencies: list[float] = [float("nan")] * len(jobs)
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)
    lock = threading.Lock()
    queue = list(range(len(jobs)))

    def worker() -> None:
        start.wait()
        while True:
            with lock:
                if not queue:
                    return
                k = queue.pop(0)
            t0 = time.perf_counter()
            try:
                results[k] = call(jobs[k])
            except BaseException as exc:  # noqa: BLE001 - reported to the caller
                results[k] = exc
                with lock:
                    errors.append(exc)
            latencies[k] = time.perf_counter() - t0

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(join_timeout)
    hung = sum(t.is_alive() for t in threads)
    if hung:
        raise TimeoutError(f"{hung} client threads still running after {join_timeout} s")
    return LoadResult(results, latencies, time.perf_counter() - t0, errors)
