"""Turning tables into manifest rows: column roles, tasks, scales, image look-up, one entry per image."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...dimensions import DIM_INDEX, DIMENSIONS
from ...errors import ManifestError
from ..manifest import MAX_REPORTED_ERRORS, TASKS, ManifestRow, row_problems
from .layout import _ImageIndex
from .names import _column_role, _dims_of, _model_of, _tasks_of, _tokens
from .tables import _Table
from .values import _SCALE_FN, _SCALE_TEXT, _is_empty, _number, _text

logger = logging.getLogger(__name__)


@dataclass
class _Entry:
    image: Path
    source: str
    task: str | None = None
    model: str | None = None
    prompt: str | None = None
    ref: Path | None = None
    lq: Path | None = None
    mos: dict[str, float] = field(default_factory=dict)


@dataclass
class _Columns:
    """How to read one table: header, data rows (line, cells), score columns (index -> dimension), the
    column of each role, and the rescaling of each score column."""

    header: list[str]
    data: list[tuple[int, list[Any]]]
    score_cols: dict[int, str]
    col: dict[str, int]
    scalers: dict[int, Callable[[float], float]]


class _Builder:
    """Accumulates tables into one entry per image; collects every problem before raising."""

    def __init__(self, root: Path, images_dir: Path, index: _ImageIndex, task_hint: str | None,
                 scale: str | None) -> None:
        self.root, self.images_dir, self.index = root, images_dir, index
        self.task_hint, self.scale = task_hint, scale
        self._root_index: _ImageIndex | None = None
        self.entries: dict[Path, _Entry] = {}
        self.errors: list[str] = []
        self.scored_tables = 0

    def add(self, table: _Table) -> None:
        """Read ``table`` into the entries, or record why it cannot be read."""
        columns = self._columns(table)
        if columns is None:
            return
        table_task = self._task_of_levels(table)
        missing: list[str] = []
        for line, cells in columns.data:
            why = self._add_row(f"{table.source}:{line}", cells, columns, table_task)
            if why is not None:
                missing.append(why)
        if missing:
            shown = "; ".join(missing[:5]) + ("; ..." if len(missing) > 5 else "")
            self.errors.append(f"{table.source}: {len(missing)} of {len(columns.data)} images not found under "
                               f"{self.images_dir} (matched by relative path, file name, or name without "
                               f"extension): {shown}")

    def _columns(self, table: _Table) -> _Columns | None:
        """The header, data rows, column roles and score scales of ``table``; None (recorded) when unusable."""
        header, data = table.header, table.rows
        if header is None:
            header, data = self._detect_header(table)
            if header is None:
                return None
        roles = self._roles(table, header)
        if roles is None:
            return None
        score_cols = {i: d for i, d in roles.items() if d in DIM_INDEX}
        if not score_cols and not any(r in ("prompt", "ref", "lq", "model", "task") for r in roles.values()):
            self.errors.append(f"{table.source}: no score column; name one mos/score or "
                               f"{'/'.join(DIMENSIONS)} (columns: {', '.join(map(str, header))})")
            return None
        self.scored_tables += bool(score_cols)
        if not score_cols:
            logger.info("%s: no scores; reading it for %s only", table.source,
                        ", ".join(sorted({r for r in roles.values() if r not in ("image", "ignore")})))
        col = {r: i for i, r in roles.items()}
        scalers = {i: self._scaler(table, header[i], [row[i] if i < len(row) else None for _, row in data])
                   for i in score_cols}
        ready = {i: s for i, s in scalers.items() if s is not None}
        if len(ready) != len(scalers):
            return None
        return _Columns(header, data, score_cols, col, ready)

    def _add_row(self, where: str, cells: list[Any], columns: _Columns, table_task: str | None) -> str | None:
        """Merge one data row into its image's entry; returns why its image was not found, else None."""
        header, col = columns.header, columns.col
        if len(cells) > len(header):
            self.errors.append(f"{where}: {len(cells)} cells but {len(header)} columns; quote cells that "
                               "hold the delimiter")
            return None
        cells = cells + [None] * (len(header) - len(cells))
        name = _text(cells[col["image"]])
        if name is None:
            self.errors.append(f"{where}: empty image name")
            return None
        model = _text(cells[col["model"]]) if "model" in col else None
        task = table_task
        if "task" in col and (raw := _text(cells[col["task"]])) is not None:
            task = self._task_value(raw, where)
        image, why = self.index.lookup(name, model=model, task=task)
        if image is None:
            return why
        entry = self.entries.get(image) or self.entries.setdefault(image, _Entry(image, where))
        self._merge(entry, "task", task, where)
        self._merge(entry, "model", model, where)
        if "prompt" in col:
            self._merge(entry, "prompt", _text(cells[col["prompt"]]), where)
        for key in ("ref", "lq"):
            if key in col and (aux := _text(cells[col[key]])) is not None:
                self._merge(entry, key, self._aux_image(aux, where, key), where)
        self._add_scores(entry, where, cells, columns)
        return None

    def _add_scores(self, entry: _Entry, where: str, cells: list[Any], columns: _Columns) -> None:
        """Rescale and merge the score cells of one (padded) row into ``entry.mos``."""
        for i, dim in columns.score_cols.items():
            value = _number(cells[i])
            if value is None:
                if not _is_empty(cells[i]):
                    self.errors.append(f"{where}: {columns.header[i]} value {cells[i]!r} is not a number")
                continue
            value = columns.scalers[i](value)
            old = entry.mos.get(dim)
            if old is not None and abs(old - value) > 1e-6:
                self.errors.append(f"{where}: {dim} MOS {value:g} conflicts with {old:g} given for the same "
                                   f"image in {entry.source}")
            entry.mos[dim] = value

    def rows(self) -> list[ManifestRow]:
        rows: list[ManifestRow] = []
        unscored = 0
        for entry in self.entries.values():
            if not entry.mos:
                unscored += 1
                continue
            rel = entry.image.relative_to(self.images_dir)
            path_task = self._task_of_folders(rel.parent.parts, str(rel))
            if entry.task and path_task and entry.task != path_task:
                self.errors.append(f"{entry.source}: task {entry.task!r} but the image lies in a "
                                   f"{path_task} folder ({rel.as_posix()}); fix the file or folder name")
            task = entry.task or path_task or self.task_hint
            if task is None:
                self.errors.append(f"{entry.source}: cannot tell the task of {rel.as_posix()}; name the MOS file or "
                                   f"its folder after the task ({', '.join(TASKS)}) or pass task_hint")
                continue
            row = ManifestRow(
                image=entry.image, task=task, prompt=entry.prompt, ref=entry.ref, lq=entry.lq,
                model=entry.model or _model_of(rel), line=len(rows) + 1,
                mos={d: entry.mos[d] for d in DIMENSIONS if d in entry.mos})
            self.errors += [f"{entry.source} ({rel.as_posix()}): {p}" for p in row_problems(row, check_files=True)]
            rows.append(row)
        if unscored:
            logger.info("%d images had metadata but no score; left out", unscored)
        if not rows and not self.errors:
            self.errors.append("no scored images: no score column in any MOS file; name one mos/score or "
                               f"{'/'.join(DIMENSIONS)}" if not self.scored_tables else "no scored images found")
        if self.errors:
            shown = self.errors[:MAX_REPORTED_ERRORS]
            more = len(self.errors) - len(shown)
            raise ManifestError(f"cannot import FaceQ from {self.root} ({len(self.errors)} "
                                f"problem{'s' * (len(self.errors) != 1)}):\n  "
                                + "\n  ".join(shown) + (f"\n  ... and {more} more" if more else ""))
        return rows

    # -- helpers

    def _detect_header(self, table: _Table) -> tuple[list[str] | None, list[tuple[int, list[Any]]]]:
        first = table.rows[0][1]
        if any(_number(c) is not None for c in first[1:]):  # data in the first row: no header
            width = max(len(cells) for _, cells in table.rows)
            if width != 2:
                self.errors.append(f"{table.source}: no header row and {width} columns; expected 2 columns "
                                   "(image name, score) or a header row naming the columns")
                return None, []
            return ["image", "mos"], table.rows
        if len(table.rows) < 2:
            self.errors.append(f"{table.source}: a header row but no data rows")
            return None, []
        return [str(c) if c is not None else "" for c in first], table.rows[1:]

    def _roles(self, table: _Table, header: list[str]) -> dict[int, str] | None:
        roles: dict[int, str] = {}
        unknown: list[str] = []
        for i, name in enumerate(header):
            role = _column_role(str(name))
            if role is None:
                unknown.append(repr(name))
            elif role != "ignore":
                roles[i] = role
        if unknown:
            self.errors.append(
                f"{table.source}: unknown column(s) {', '.join(unknown)}; expected an image column "
                f"(image/name/filename), scores (mos/score or {'/'.join(DIMENSIONS)}), and optionally "
                "prompt, ref, lq, model, task")
            return None
        taken: dict[str, int] = {}
        for i, role in roles.items():
            if role in taken:
                self.errors.append(f"{table.source}: columns {header[taken[role]]!r} and {header[i]!r} both read "
                                   f"as {role}; rename one")
                return None
            taken[role] = i
        if "image" not in taken:
            self.errors.append(f"{table.source}: no image column; name it image, name or filename "
                               f"(columns: {', '.join(map(str, header))})")
            return None
        if "mos" in taken:
            if any(r in DIM_INDEX for r in taken):
                self.errors.append(f"{table.source}: both a generic {header[taken['mos']]!r} column and "
                                   "per-dimension columns; rename the generic one after its dimension")
                return None
            dim = self._dim_of_levels(table)
            if dim is None:
                return None
            roles[taken["mos"]] = dim
        ignored = [str(header[i]) for i in range(len(header)) if i not in roles]
        if ignored:
            logger.info("%s: ignoring columns %s", table.source, ignored)
        return roles

    def _dim_of_levels(self, table: _Table) -> str | None:
        for tokens in table.levels:
            dims = _dims_of(tokens)
            if len(dims) == 1:
                return dims.pop()
            if len(dims) > 1:
                self.errors.append(f"{table.source}: its name mentions several dimensions ({', '.join(sorted(dims))})"
                                   "; name the score column after its dimension instead of mos/score")
                return None
        self.errors.append(f"{table.source}: a mos/score column but the file name does not say the dimension; "
                           f"rename the file (e.g. quality.csv) or the column to one of {', '.join(DIMENSIONS)}")
        return None

    def _task_of_levels(self, table: _Table) -> str | None:
        for tokens in table.levels:
            tasks = _tasks_of(tokens)
            if len(tasks) == 1:
                return tasks.pop()
            if len(tasks) > 1:
                self.errors.append(f"{table.source}: its name mentions several tasks ({', '.join(sorted(tasks))})")
                return None
        return None

    def _task_of_folders(self, folders: tuple[str, ...], where: str) -> str | None:
        for folder in folders:
            tasks = _tasks_of(_tokens(folder))
            if len(tasks) == 1:
                return tasks.pop()
        return None

    def _task_value(self, raw: str, where: str) -> str | None:
        tasks = _tasks_of(_tokens(raw))
        if len(tasks) != 1:
            self.errors.append(f"{where}: task {raw!r} is not one of {', '.join(TASKS)}")
            return None
        return tasks.pop()

    def _scaler(self, table: _Table, column: str, cells: list[Any]) -> Callable[[float], float] | None:
        values = [v for v in (_number(c) for c in cells) if v is not None]
        if not values:
            return lambda x: x
        lo, hi = min(values), max(values)
        scale = self.scale
        if scale is None:
            scale = "0-1" if hi <= 1 and lo >= 0 else "0-5" if hi <= 5 and lo < 1 else "1-5" if hi <= 5 else "0-100"
            if scale != "0-100":
                logger.warning("%s: column %r spans %g..%g, read as a %s scale and rescaled to 0..100 with %s "
                               "(pass scale=... to import_faceq to override)", table.source, column, lo, hi, scale,
                               _SCALE_TEXT[scale])
        low, high = {"0-100": (0, 100), "0-5": (0, 5), "1-5": (1, 5), "0-1": (0, 1)}[scale]
        if lo < low - 1e-9 or hi > high + 1e-9:
            self.errors.append(f"{table.source}: column {column!r} spans {lo:g}..{hi:g}, outside the {scale} scale; "
                               "MOS must be on 0..100 (or 0..5 / 1..5 / 0..1, rescaled on import)")
            return None
        return _SCALE_FN[scale]

    def _aux_image(self, name: str, where: str, key: str) -> Path | None:
        for base in (self.root, self.images_dir):
            p = base / name
            if p.is_file():
                return p
        if self._root_index is None:
            self._root_index = _ImageIndex(self.root)
        path, why = self._root_index.lookup(name)
        if path is None:
            self.errors.append(f"{where}: {key} image {why} under {self.root}")
        return path

    def _merge(self, entry: _Entry, key: str, value: Any, where: str) -> None:
        if value is None:
            return
        old = getattr(entry, key)
        if old is None:
            setattr(entry, key, value)
        elif old != value:
            self.errors.append(f"{where}: {key} {value!s} conflicts with {old!s} given for the same image in "
                               f"{entry.source}")
