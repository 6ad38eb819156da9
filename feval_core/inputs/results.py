"""JSON Lines results that survive being killed: whole-line appends, repair of a torn last line, resume."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def json_line(record: dict[str, Any]) -> str:
    """One strict-JSON line (with its newline) that always encodes to UTF-8.

    Non-ASCII text is kept as is, except where a value holds lone surrogates (file names that are not
    valid UTF-8 on Linux decode to them): that line is written with ``\\uXXXX`` escapes, which read back
    to the same Python string, so resuming still matches the name.
    """
    text = json.dumps(record, ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(record, ensure_ascii=True, allow_nan=False)
    return text + "\n"


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Complete rows of a results file (a torn last line is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                break  # torn by a kill mid-write; repaired before appending
            try:
                row = json.loads(raw)
            except json.JSONDecodeError:
                logger.warning("%s line %d is not JSON; ignoring it", path, n)
                continue
            if isinstance(row, dict) and "image" in row:
                rows.append(row)
    return rows


class ResultsWriter:
    """Appends one JSON object per line; each line goes out in a single ``write`` and is fsynced.

    Opening repairs a torn last line (left by ``kill -9``) and records which images are done, so
    re-running the same command scores only what is missing.
    """

    def __init__(self, path: str | Path, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self.rows = read_results(self.path)
        self.done = {r["image"] for r in self.rows}
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _repair(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                logger.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run",
                               self.path, len(data) - keep)
                f.truncate(keep)

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        records = list(records)
        lines = [json_line(r) for r in records]
        if not lines:
            return
        os.write(self._fd, "".join(lines).encode("utf-8"))
        if self.fsync:
            os.fsync(self._fd)
        for r in records:
            self.done.add(r["image"])

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
