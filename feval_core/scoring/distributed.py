"""Data-parallel scoring under ``accelerate launch``: shard the inputs, score each share into a part file,
merge the parts into the one ``--out`` file in input order.

Under ``accelerate launch --num_processes N ... feval score ... --out results.jsonl`` every process scores
whole chunks of ``--batch-size`` inputs, round-robin (chunk ``k`` goes to process ``k % N``), into
``results.jsonl.part<rank>``. The chunks are the ones a single process would score, so every row is computed
from the same batch as in a single-process run. When all are done, the main process appends the rows to
``results.jsonl`` in input order and removes the part files: the result equals a single-process run's.

Resuming: rows already in ``--out`` or in any part file are not scored again, whatever the number of
processes was; a merge that was cut short is finished by the next run.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..inputs.results import ResultsWriter, read_results

logger = logging.getLogger(__name__)

T = TypeVar("T")

PART_INFIX = ".part"


def launched_processes() -> int:
    """How many processes ``accelerate launch`` (or torchrun) started for this run; 1 outside a launcher."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def part_path(out: str | Path, rank: int) -> Path:
    """Where process ``rank`` writes its rows before the merge."""
    out = Path(out)
    return out.with_name(f"{out.name}{PART_INFIX}{rank}")


def part_files(out: str | Path) -> list[Path]:
    """Part files left next to ``out`` by this or an earlier (interrupted) run, in rank order."""
    out = Path(out)
    found = glob.glob(os.path.join(glob.escape(str(out.parent)), glob.escape(out.name) + PART_INFIX + "*"))
    paths = [Path(p) for p in found if Path(p).name[len(out.name) + len(PART_INFIX):].isdigit()]
    return sorted(paths, key=lambda p: int(p.name[len(out.name) + len(PART_INFIX):]))


def shard_chunks(items: Sequence[T], batch_size: int, rank: int, world: int) -> list[T]:
    """The items process ``rank`` of ``world`` scores: whole chunks of ``batch_size``, round-robin.

    Concatenated, they re-chunk into the very same chunks (only the globally last chunk may be short, and
    it is the last of its process), so each row is scored in the same batch as in a single-process run.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside 0..{world - 1}")
    mine: list[T] = []
    for k, start in enumerate(range(0, len(items), batch_size)):
        if k % world == rank:
            mine.extend(items[start:start + batch_size])
    return mine


def index_rows(paths: Iterable[Path]) -> dict[str, tuple[Path, int, int]]:
    """``image -> (file, offset, length)`` of each complete row in ``paths`` (the first one wins)."""
    import json

    index: dict[str, tuple[Path, int, int]] = {}
    for path in paths:
        with path.open("rb") as f:
            offset = 0
            for raw in f:
                if raw.endswith(b"\n"):
                    try:
                        row = json.loads(raw)
                    except ValueError:
                        row = None
                    if isinstance(row, dict) and isinstance(row.get("image"), str):
                        index.setdefault(row["image"], (path, offset, len(raw)))
                offset += len(raw)
    return index


def merge_parts(out: str | Path, names: Sequence[str]) -> tuple[int, list[str]]:
    """Append to ``out`` the part-file rows of ``names`` that ``out`` lacks, in the order of ``names``.

    Returns (rows appended, names found nowhere). The part files are removed when nothing is missing.
    """
    out = Path(out)
    parts = part_files(out)
    index = index_rows(parts)
    with ResultsWriter(out) as writer:  # repairs a torn last line left by an interrupted merge
        done = set(writer.done)
    added = 0
    missing: list[str] = []
    handles: dict[Path, Any] = {}
    buffer: list[bytes] = []
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for name in names:
            if name in done:
                continue
            where = index.get(name)
            if where is None:
                missing.append(name)
                continue
            path, offset, length = where
            f = handles.get(path) or handles.setdefault(path, path.open("rb"))
            f.seek(offset)
            buffer.append(f.read(length))  # the row byte for byte, as a single process would have written it
            done.add(name)
            added += 1
            if len(buffer) >= 256:
                _append(fd, buffer)
        _append(fd, buffer)
        os.fsync(fd)
    finally:
        os.close(fd)
        for f in handles.values():
            f.close()
    if not missing:
        for p in parts:
            p.unlink()
    return added, missing


def _append(fd: int, lines: list[bytes]) -> None:
    """Append whole rows in one write (a kill leaves at most one torn row, which the next run repairs)."""
    if lines:
        os.write(fd, b"".join(lines))
        lines.clear()


class ShardedRun:
    """One process's view of a sharded ``feval score --out`` run (see the module docstring).

    Every process calls :meth:`plan`, scores the items it returns into :meth:`writer`, then calls
    :meth:`finish`; the main process merges.
    """

    def __init__(self, out: str | Path, *, cpu: bool = False) -> None:
        import torch
        from accelerate import PartialState

        self.out = Path(out)
        # without cpu=True, accelerate sets up no process group on a machine without GPUs
        self.state = PartialState(cpu=cpu or not torch.cuda.is_available())
        self.rank = self.state.process_index
        self.world = self.state.num_processes
        self.local_rank = self.state.local_process_index

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str | None) -> str:
        """This process's device: its own GPU under a multi-GPU launch, the CPU when asked."""
        if requested and requested.startswith("cpu"):
            return "cpu"
        if requested and ":" in requested:
            logger.warning("--device %s under accelerate launch: each process uses its own device instead",
                           requested)
        return str(self.state.device)

    def plan(self, items: Sequence[T], batch_size: int, name_of: Any = lambda it: it.name) -> list[T]:
        """This process's items: those not yet in ``--out`` or any part file, sharded by whole chunks."""
        if self.is_main:
            ResultsWriter(self.out).close()  # repair a torn last line before anyone reads the file
        self.state.wait_for_everyone()
        done = {r["image"] for r in read_results(self.out)}
        for p in part_files(self.out):
            done.update(r["image"] for r in read_results(p))
        todo = [it for it in items if name_of(it) not in done]
        # everyone has read the files before anyone writes a part file
        self.state.wait_for_everyone()
        if self.is_main and len(todo) < len(items):
            logger.info("resuming: %d of %d images already scored", len(items) - len(todo), len(items))
        return shard_chunks(todo, batch_size, self.rank, self.world)

    def writer(self) -> ResultsWriter:
        return ResultsWriter(part_path(self.out, self.rank))

    def finish(self, names: Sequence[str]) -> list[str]:
        """Wait for every process; the main one merges the parts into ``--out``. Returns names without a row."""
        self.state.wait_for_everyone()
        missing: list[str] = []
        if self.is_main:
            added, missing = merge_parts(self.out, names)
            logger.info("merged %d rows from %d processes into %s", added, self.world, self.out)
            if missing:
                machines = self.world > int(os.environ.get("LOCAL_WORLD_SIZE", self.world))  # set by torchrun
                shared = "; on several machines, --out must be on a filesystem all of them see" if machines else ""
                logger.error("%d inputs have no row in any part file (first: %s); re-run the same command to "
                             "score them%s", len(missing), missing[0], shared)
        self.state.wait_for_everyone()
        return missing
