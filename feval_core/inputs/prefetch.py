"""Prefetching: decode, resize and detect faces in worker threads ahead of the model, in a bounded window.

:class:`Prefetcher` takes chunks of items and a ``prepare(item, state)`` function, keeps up to ``ahead``
chunks being prepared by ``workers`` threads while the consumer scores the current one, and hands out
ready chunks in input order. At most ``(ahead + 1) * chunk size`` prepared items exist at any time, however
many items there are, so memory stays flat when scoring a folder of any size. Items are pulled from the
chunk iterable only as the window advances, so a lazy iterable is never materialised.

Threads suit this work: Pillow decoding and resizing, NumPy normalisation and onnxruntime all release the
GIL. Anything per-thread that is not thread-safe (a tokenizer that another thread may reconfigure) comes
from ``make_state``; :class:`ObjectPool` keeps such objects for reuse across calls.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")

DEFAULT_AHEAD = 2


def default_workers() -> int:
    """Worker threads used when none are asked for: up to 4, never more than the CPU cores."""
    return max(1, min(4, os.cpu_count() or 1))


class ObjectPool(Generic[S]):
    """Objects made by ``factory`` on demand and handed back for reuse (e.g. a processor copy per thread)."""

    def __init__(self, factory: Callable[[], S]) -> None:
        self._factory = factory
        self._free: list[S] = []
        self._lock = threading.Lock()
        self.created = 0

    def acquire(self) -> S:
        with self._lock:
            if self._free:
                return self._free.pop()
            self.created += 1
        return self._factory()

    def release(self, obj: S) -> None:
        with self._lock:
            self._free.append(obj)


@dataclass
class PrefetchStats:
    """What a :class:`Prefetcher` did; ``wait_s`` near zero means the model, not the CPU side, sets the pace."""

    chunks: int = 0
    items: int = 0
    wait_s: float = 0.0  # time the consumer spent blocked waiting for a ready chunk
    prepare_s: float = 0.0  # worker time spent in ``prepare`` (summed over threads)
    max_in_flight: int = 0  # most items submitted and not yet handed to the consumer, at any moment


class Prefetcher(Generic[T, R]):
    """Iterate ready chunks (lists of ``prepare(item, state)`` results, in input order), prepared ahead.

    ``workers=0`` prepares each chunk in the calling thread when it is asked for (no overlap, no threads).
    An exception raised by ``prepare`` reaches the consumer with the chunk that holds the item; the
    remaining work is cancelled and the threads are joined when iteration ends or is abandoned.
    """

    def __init__(
        self,
        chunks: Iterable[Sequence[T]],
        prepare: Callable[[T, Any], R],
        *,
        workers: int | None = None,
        ahead: int = DEFAULT_AHEAD,
        make_state: Callable[[], Any] | None = None,
        release_state: Callable[[Any], None] | None = None,
    ) -> None:
        if ahead < 1:
            raise ValueError(f"ahead must be >= 1 (chunks prepared ahead of the consumer), got {ahead}")
        workers = default_workers() if workers is None else int(workers)
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self._chunks = chunks
        self._prepare = prepare
        self.workers = workers
        self.ahead = ahead
        self._make_state = make_state
        self._release_state = release_state
        self.stats = PrefetchStats()
        self._stats_lock = threading.Lock()

    def __iter__(self) -> Iterator[list[R]]:
        if self.workers == 0:
            yield from self._serial()
        else:
            yield from self._threaded()

    # -- serial --------------------------------------------------------------------------------------------
    def _serial(self) -> Iterator[list[R]]:
        state = self._make_state() if self._make_state is not None else None
        try:
            for chunk in self._chunks:
                t0 = time.perf_counter()
                out = [self._prepare(item, state) for item in chunk]
                spent = time.perf_counter() - t0
                self.stats.prepare_s += spent
                self.stats.wait_s += spent
                self.stats.chunks += 1
                self.stats.items += len(out)
                self.stats.max_in_flight = max(self.stats.max_in_flight, len(out))
                yield out
        finally:
            if state is not None and self._release_state is not None:
                self._release_state(state)

    # -- threaded ------------------------------------------------------------------------------------------
    def _threaded(self) -> Iterator[list[R]]:
        local = threading.local()
        states: list[Any] = []
        states_lock = threading.Lock()

        def run(item: T) -> R:
            if self._make_state is not None and not hasattr(local, "state"):
                local.state = self._make_state()
                with states_lock:
                    states.append(local.state)
            t0 = time.perf_counter()
            try:
                return self._prepare(item, getattr(local, "state", None))
            finally:
                with self._stats_lock:
                    self.stats.prepare_s += time.perf_counter() - t0

        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="feval-prefetch")
        pending: deque[list[Future[R]]] = deque()
        source = iter(self._chunks)
        in_flight = 0
        exhausted = False

        def fill() -> None:
            nonlocal in_flight, exhausted
            while not exhausted and len(pending) < self.ahead:
                try:
                    chunk = next(source)
                except StopIteration:
                    exhausted = True
                    return
                futures = [pool.submit(run, item) for item in chunk]
                pending.append(futures)
                in_flight += len(futures)
                self.stats.max_in_flight = max(self.stats.max_in_flight, in_flight)

        try:
            fill()
            while pending:
                futures = pending.popleft()
                t0 = time.perf_counter()
                ready = [f.result() for f in futures]
                self.stats.wait_s += time.perf_counter() - t0
                in_flight -= len(futures)
                self.stats.chunks += 1
                self.stats.items += len(ready)
                fill()  # the next chunks get prepared while the consumer works on this one
                yield ready
        finally:
            for futures in pending:
                for f in futures:
                    f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            if self._release_state is not None:
                for state in states:
                    self._release_state(state)


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of ``items`` of length ``size`` (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    for start in range(0, len(items), size):
        yield items[start:start + size]
