"""Import a FaceQ download (``images/`` + ``MOSs/``) into a feval manifest.

FaceQ's score-file format is not public, so the common layouts are accepted:

* CSV / TSV / TXT tables (delimiter sniffed: tab, comma, semicolon, bar or whitespace), with a header row
  naming the columns, or headerless ``name score`` pairs whose file name says the dimension
  (``MOSs/quality.txt``, ``generation_id_mos.csv``);
* XLSX / XLS workbooks (every sheet; needs ``openpyxl`` / ``xlrd``), same rules, the sheet name also counts;
* JSON: a list of objects, ``{name: score}``, or ``{name: {column: value}}``; JSON Lines of objects.

Columns are recognised by name (case-insensitive): image (``image``/``name``/``filename``/``img``),
scores (``mos``/``score``, or per dimension ``quality``, ``authenticity``, ``id``/``identity``/
``id_fidelity``, ``correspondence``/``consistency``/``alignment``), ``prompt``/``caption``/``text``,
``ref``/``reference``, ``lq``, ``model``/``method``, ``task``; std/count/index/split columns are ignored.
The task comes from a ``task`` column, the MOS file's (or sheet's, or folders') name, the image's folders
under ``images/``, or ``task_hint``. A generic ``mos`` column takes its dimension from the file name.
Image names are found under ``images/`` by relative path, file name, or name without extension; the model
comes from a column or from the image's folder. Scores on 0..5 / 1..5 / 0..1 are rescaled to 0..100
(logged). Anything else fails with a :class:`~feval_core.errors.ManifestError` naming the file.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import numbers
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .dimensions import DIM_INDEX, DIMENSIONS
from .errors import ManifestError
from .manifest import (
    MAX_REPORTED_ERRORS,
    TASKS,
    ManifestRow,
    row_problems,
    write_manifest,
)

logger = logging.getLogger(__name__)

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
TABLE_EXTS = frozenset({".csv", ".tsv", ".txt", ".xlsx", ".xls", ".json", ".jsonl"})
SCALES: tuple[str, ...] = ("0-100", "0-5", "1-5", "0-1")
_SKIP_EXTS = frozenset({".md", ".pdf", ".doc", ".docx", ".html", ".htm", ".rtf", ".log"}) | IMAGE_EXTS
_SKIP_STEMS = frozenset({"readme", "license", "licence", "notes", "changelog"})
_IMAGES_DIRS = ("images", "image", "imgs", "img")
_MOS_DIRS = ("moss", "mos", "mos_s", "scores")

_TASK_TOKENS: dict[str, frozenset[str]] = {
    "generation": frozenset({"generation", "gen", "generated", "generate", "t2i", "txt2img", "text2image"}),
    "customization": frozenset({"customization", "customisation", "cust", "custom", "customized",
                                "customised", "personalization", "personalisation", "personalized"}),
    "restoration": frozenset({"restoration", "rest", "resto", "restored", "restore"}),
}
_TASK_PREFIXES = {"generation": ("generat",), "customization": ("customi", "personali"), "restoration": ("restor",)}

_DIM_TOKENS: dict[str, frozenset[str]] = {
    "quality": frozenset({"quality", "qual", "iqa"}),
    "authenticity": frozenset({"authenticity", "authentic", "auth", "realism", "realness", "naturalness"}),
    "identity": frozenset({"id", "identity", "idfidelity", "fidelity"}),
    "correspondence": frozenset({"correspondence", "corr", "consistency", "alignment", "align", "relevance"}),
}
_DIM_STEMS = {"quality": ("quality",), "authenticity": ("authentic",), "identity": ("identity", "fidelity"),
              "correspondence": ("correspond", "consisten", "alignment")}

# Column roles by exact (normalised) header, then by the words in it.
_EXACT_ROLES: dict[str, str] = {
    **dict.fromkeys(("image", "images", "img", "name", "filename", "file", "file_name", "image_name", "img_name",
                     "imagename", "imgname", "image_path", "img_path", "path", "image_file", "picture", "pic",
                     "image_id", "img_id", "image_filename"), "image"),
    **dict.fromkeys(("mos", "score", "scores", "mean", "mean_score", "mos_score", "rating", "avg", "average",
                     "label", "value", "mean_opinion_score"), "mos"),
    **dict.fromkeys(("model", "method", "generator", "model_name", "method_name", "algorithm", "network"),
                    "model"),
    **dict.fromkeys(("prompt", "prompts", "caption", "text", "description"), "prompt"),
    **dict.fromkeys(("ref", "reference", "ref_image", "reference_image", "ref_img", "ref_path", "ref_name",
                     "reference_face", "ref_face"), "ref"),
    **dict.fromkeys(("lq", "lq_image", "lq_img", "lq_path", "low_quality", "low_quality_image", "degraded",
                     "input"), "lq"),
    **dict.fromkeys(("task", "tasks"), "task"),
    **dict.fromkeys(("index", "idx", "no", "num", "number", "n", "count", "std", "sd", "stdev", "std_dev",
                     "variance", "var", "split", "set", "subset", "fold", "z_score", "zscore", "votes",
                     "num_ratings", "n_ratings"), "ignore"),
}
_STAT_TOKENS = frozenset({"std", "sd", "stdev", "var", "variance", "count", "ci", "zscore", "votes"})
_ID_COMPANIONS = frozenset({"mos", "score", "fidelity", "rating", "mean", "avg", "sim", "similarity"})
_GENERIC_FOLDERS = frozenset({"images", "image", "imgs", "img", "real", "synthetic", "syn", "real_world",
                              "realworld", "lq", "hq", "gt", "output", "outputs", "results", "result"})
_EMPTY_CELLS = frozenset({"", "nan", "na", "n/a", "none", "null", "-"})


def import_faceq(
    root: str | os.PathLike[str],
    out_manifest: str | os.PathLike[str],
    *,
    task_hint: str | None = None,
    scale: str | None = None,
) -> list[ManifestRow]:
    """Turn a FaceQ download at ``root`` into a manifest at ``out_manifest``; returns its rows.

    ``task_hint`` is the task of images whose file and folder names do not say it. ``scale`` forces the
    score scale of every column (one of :data:`SCALES`); by default it is told from each column's range.
    """
    root = Path(root).expanduser().absolute()
    if task_hint is not None and task_hint not in TASKS:
        raise ValueError(f"task_hint={task_hint!r} is not a task; use one of {', '.join(TASKS)}")
    if scale is not None and scale not in SCALES:
        raise ValueError(f"scale={scale!r} is not supported; use one of {', '.join(SCALES)} or None (auto)")
    images_dir, mos_dir = _locate(root)
    index = _ImageIndex(images_dir)
    if not index.count:
        raise ManifestError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) under {images_dir}")
    builder = _Builder(root, images_dir, index, task_hint, scale)
    for path in _mos_files(mos_dir):
        try:
            tables = _read_tables(path, mos_dir)
        except ManifestError as exc:  # report it with the problems of the other files
            builder.errors.append(str(exc))
            continue
        for table in tables:
            builder.add(table)
    rows = builder.rows()
    write_manifest(rows, out_manifest)
    logger.info("imported %d FaceQ images (%d scores) from %s into %s", len(rows),
                sum(len(r.mos) for r in rows), root, out_manifest)
    return rows


# --- locating files ------------------------------------------------------------------------------------


def _locate(root: Path) -> tuple[Path, Path]:
    if not root.is_dir():
        raise ManifestError(f"FaceQ folder not found: {root}")
    for folder in (root, *_only_subfolder(root)):
        images, mos = _child_dir(folder, _IMAGES_DIRS), _child_dir(folder, _MOS_DIRS)
        if images is not None and mos is not None:
            if folder != root:
                logger.info("using the FaceQ download inside %s", folder)
            return images, mos
    found = sorted(c.name + "/" for c in root.iterdir() if c.is_dir())
    raise ManifestError(f"{root} does not look like a FaceQ download: expected the folders images/ and MOSs/ "
                        f"(found {', '.join(found) or 'no folders'}); pass the folder that holds both")


def _only_subfolder(root: Path) -> list[Path]:
    subs = [c for c in root.iterdir() if c.is_dir() and not c.name.startswith(".")]
    return subs if len(subs) == 1 else []


def _child_dir(folder: Path, names: Iterable[str]) -> Path | None:
    wanted = set(names)
    for child in sorted(folder.iterdir()):
        if child.is_dir() and child.name.lower() in wanted:
            return child
    return None


def _mos_files(mos_dir: Path) -> list[Path]:
    files: list[Path] = []
    for p in sorted(mos_dir.rglob("*")):
        if not p.is_file() or p.name.startswith((".", "~$")):
            continue
        ext = p.suffix.lower()
        if ext in TABLE_EXTS and p.stem.lower() not in _SKIP_STEMS:
            files.append(p)
        elif ext in _SKIP_EXTS or p.stem.lower() in _SKIP_STEMS:
            logger.info("skipping %s (not a score table)", p)
        else:
            raise ManifestError(f"{p}: unsupported score file format {ext or '(no extension)'}; convert it to CSV "
                                f"(columns image, mos) or one of {', '.join(sorted(TABLE_EXTS))}")
    if not files:
        raise ManifestError(f"no score files ({', '.join(sorted(TABLE_EXTS))}) in {mos_dir}")
    return files


class _ImageIndex:
    """Image files under a folder, found by any trailing part of their relative path, with or without extension."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._by_key: dict[str, list[Path]] = defaultdict(list)
        self.count = 0
        for p in sorted(folder.rglob("*")):
            if p.suffix.lower() not in IMAGE_EXTS or p.name.startswith(".") or not p.is_file():
                continue
            self.count += 1
            parts = [s.lower() for s in p.relative_to(folder).parts]
            for i in range(len(parts)):
                key = "/".join(parts[i:])
                self._by_key[key].append(p)
                self._by_key[_strip_ext(key)].append(p)

    def lookup(self, name: str, *, model: str | None = None, task: str | None = None) -> tuple[Path | None, str]:
        """The one file ``name`` means, or ``(None, why)``; ``model`` and ``task`` break ties between folders."""
        parts = [s for s in re.split(r"[\\/]+", name.strip().lower()) if s not in ("", ".")]
        if parts and re.fullmatch(r"[a-z]:", parts[0]):
            parts = parts[1:]
        for i in range(len(parts)):
            key = "/".join(parts[i:])
            cands = self._by_key.get(key)
            if not cands and Path(key).suffix in IMAGE_EXTS:
                cands = self._by_key.get(_strip_ext(key))  # listed as .png, stored as .jpg
            if not cands:
                continue
            unique = list(dict.fromkeys(cands))
            if len(unique) > 1 and model:
                unique = [p for p in unique if model.lower() in self._folders(p)] or unique
            if len(unique) > 1 and task:
                unique = [p for p in unique if any(_tasks_of(_tokens(f)) == {task} for f in self._folders(p))] or unique
            if len(unique) == 1:
                return unique[0], ""
            shown = ", ".join(p.relative_to(self.folder).as_posix() for p in unique[:3])
            return None, f"{name!r} is ambiguous ({shown}{', ...' if len(unique) > 3 else ''}); give its folder too"
        return None, f"{name!r} not found"


    def _folders(self, p: Path) -> list[str]:
        return [f.lower() for f in p.relative_to(self.folder).parent.parts]


def _strip_ext(key: str) -> str:
    stem, ext = os.path.splitext(key)
    return stem if ext.lower() in IMAGE_EXTS else key


# --- reading tables ------------------------------------------------------------------------------------


@dataclass
class _Table:
    """One table of a score file: ``header`` None means "detect"; ``rows`` are (line, cells)."""

    source: str
    levels: list[list[str]]  # name tokens, most specific first: sheet, file stem, folders
    rows: list[tuple[int, list[Any]]]
    header: list[str] | None = None


def _read_tables(path: Path, mos_dir: Path) -> list[_Table]:
    rel = path.relative_to(mos_dir.parent).as_posix()
    folders = [_tokens(p) for p in reversed(path.relative_to(mos_dir).parent.parts)]
    levels = [_tokens(path.stem), *folders]
    ext = path.suffix.lower()
    if ext in (".xlsx", ".xls"):
        tables = [_Table(f"{rel}[{sheet}]", [_tokens(sheet), *levels], rows)
                  for sheet, rows in _read_excel(path).items() if rows]
        if not tables:
            raise ManifestError(f"{rel}: every sheet is empty; expected rows of image name and score")
        return tables
    if ext in (".json", ".jsonl"):
        header, rows = _read_json(path, rel)
        return [_Table(rel, levels, rows, header)]
    return [_Table(rel, levels, _read_delimited(path, rel))]


def _read_delimited(path: Path, rel: str) -> list[tuple[int, list[Any]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    lines = [(i, line) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise ManifestError(f"{rel}: empty file; expected rows of image name and score")
    sample = [line for _, line in lines[:50]]
    for delim in ("\t", ",", ";", "|"):
        if path.suffix.lower() == ".tsv" and delim != "\t":
            break
        counts = {len(r) for r in csv.reader(sample, delimiter=delim)}
        if len(counts) == 1 and counts.pop() > 1:
            return [(i, [c.strip() for c in cells])
                    for (i, _), cells in zip(lines, csv.reader([t for _, t in lines], delimiter=delim), strict=False)]
    counts = {len(line.split()) for line in sample}
    if len(counts) == 1 and counts.pop() > 1:
        return [(i, line.split()) for i, line in lines]
    raise ManifestError(f"{rel}: cannot tell the column delimiter (tried tab, comma, semicolon, bar, spaces); "
                        "every line needs the same number of columns, e.g. 'img_001.png,63.2'")


def _read_excel(path: Path) -> dict[str, list[tuple[int, list[Any]]]]:
    engine = "openpyxl" if path.suffix.lower() == ".xlsx" else "xlrd"
    missing = [m for m in ("pandas", engine) if importlib.util.find_spec(m) is None]
    if missing:
        raise ManifestError(f"{path}: reading {path.suffix} files needs {' and '.join(missing)}; "
                            f"pip install {' '.join(missing)} (or save each sheet as CSV)")
    import pandas as pd

    sheets = pd.read_excel(path, sheet_name=None, header=None, dtype=object, engine=engine)
    out: dict[str, list[tuple[int, list[Any]]]] = {}
    for name, frame in sheets.items():
        rows = []
        for i, values in enumerate(frame.itertuples(index=False), start=1):
            cells = [None if _is_empty(v) else v for v in values]
            while cells and cells[-1] is None:
                cells.pop()
            if cells:
                rows.append((i, cells))
        out[str(name)] = rows
    return out


def _read_json(path: Path, rel: str) -> tuple[list[str], list[tuple[int, list[Any]]]]:
    shapes = ("a list of objects, {name: score}, {name: {column: value}}, or JSON Lines of objects")
    try:
        if path.suffix.lower() == ".jsonl":
            data: Any = [json.loads(line) for line in path.read_text(encoding="utf-8-sig").splitlines()
                         if line.strip()]
        else:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{rel}: invalid JSON ({exc.msg}, line {exc.lineno}); expected {shapes}") from exc
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"annotations": [...]}
    if not data:
        raise ManifestError(f"{rel}: empty file; expected {shapes}")
    if isinstance(data, list) and all(isinstance(d, dict) for d in data):
        header = list(dict.fromkeys(k for d in data for k in d))
        return header, [(i, [d.get(k) for k in header]) for i, d in enumerate(data, start=1)]
    if isinstance(data, dict) and all(isinstance(v, dict) for v in data.values()):
        keys = list(dict.fromkeys(k for v in data.values() for k in v))
        return ["image", *keys], [(i, [name, *(v.get(k) for k in keys)])
                                  for i, (name, v) in enumerate(data.items(), start=1)]
    if isinstance(data, dict) and all(_number(v) is not None or _is_empty(v) for v in data.values()):
        return ["image", "mos"], [(i, [name, v]) for i, (name, v) in enumerate(data.items(), start=1)]
    raise ManifestError(f"{rel}: unsupported JSON layout; expected {shapes}")


# --- interpreting tables -------------------------------------------------------------------------------


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
        header, data = table.header, table.rows
        if header is None:
            header, data = self._detect_header(table)
            if header is None:
                return
        roles = self._roles(table, header)
        if roles is None:
            return
        score_cols = {i: d for i, d in roles.items() if d in DIM_INDEX}
        if not score_cols and not any(r in ("prompt", "ref", "lq", "model", "task") for r in roles.values()):
            self.errors.append(f"{table.source}: no score column; name one mos/score or "
                               f"{'/'.join(DIMENSIONS)} (columns: {', '.join(map(str, header))})")
            return
        self.scored_tables += bool(score_cols)
        if not score_cols:
            logger.info("%s: no scores; reading it for %s only", table.source,
                        ", ".join(sorted({r for r in roles.values() if r not in ("image", "ignore")})))
        col = {r: i for i, r in roles.items()}
        scalers = {i: self._scaler(table, header[i], [row[i] if i < len(row) else None for _, row in data])
                   for i in score_cols}
        if any(s is None for s in scalers.values()):
            return
        table_task = self._task_of_levels(table)
        missing: list[str] = []
        for line, cells in data:
            where = f"{table.source}:{line}"
            if len(cells) > len(header):
                self.errors.append(f"{where}: {len(cells)} cells but {len(header)} columns; quote cells that "
                                   "hold the delimiter")
                continue
            cells = cells + [None] * (len(header) - len(cells))
            name = _text(cells[col["image"]])
            if name is None:
                self.errors.append(f"{where}: empty image name")
                continue
            model = _text(cells[col["model"]]) if "model" in col else None
            task = table_task
            if "task" in col and (raw := _text(cells[col["task"]])) is not None:
                task = self._task_value(raw, where)
            image, why = self.index.lookup(name, model=model, task=task)
            if image is None:
                missing.append(why)
                continue
            entry = self.entries.get(image) or self.entries.setdefault(image, _Entry(image, where))
            self._merge(entry, "task", task, where)
            self._merge(entry, "model", model, where)
            if "prompt" in col:
                self._merge(entry, "prompt", _text(cells[col["prompt"]]), where)
            for key in ("ref", "lq"):
                if key in col and (aux := _text(cells[col[key]])) is not None:
                    self._merge(entry, key, self._aux_image(aux, where, key), where)
            for i, dim in score_cols.items():
                value = _number(cells[i])
                if value is None:
                    if not _is_empty(cells[i]):
                        self.errors.append(f"{where}: {header[i]} value {cells[i]!r} is not a number")
                    continue
                value = scalers[i](value)
                old = entry.mos.get(dim)
                if old is not None and abs(old - value) > 1e-6:
                    self.errors.append(f"{where}: {dim} MOS {value:g} conflicts with {old:g} given for the same "
                                       f"image in {entry.source}")
                entry.mos[dim] = value
        if missing:
            shown = "; ".join(missing[:5]) + ("; ..." if len(missing) > 5 else "")
            self.errors.append(f"{table.source}: {len(missing)} of {len(data)} images not found under "
                               f"{self.images_dir} (matched by relative path, file name, or name without "
                               f"extension): {shown}")

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


_SCALE_TEXT = {"0-5": "x*20", "1-5": "(x-1)*25", "0-1": "x*100", "0-100": "no change"}
_SCALE_FN: dict[str, Callable[[float], float]] = {
    "0-100": lambda x: x,
    "0-5": lambda x: round(x * 20.0, 6),  # round away float noise: (4.1 - 1) * 25 -> 77.5, not 77.49999999999999
    "1-5": lambda x: round((x - 1.0) * 25.0, 6),
    "0-1": lambda x: round(x * 100.0, 6),
}


def _tokens(name: str) -> list[str]:
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.findall(r"[a-z]+|[0-9]+", name.lower())


def _dims_of(tokens: list[str]) -> set[str]:
    joined = "".join(tokens)
    found = {d for d, words in _DIM_TOKENS.items() if words.intersection(tokens)}
    return found | {d for d, stems in _DIM_STEMS.items() if any(s in joined for s in stems)}


def _tasks_of(tokens: list[str]) -> set[str]:
    return {t for t, words in _TASK_TOKENS.items()
            if words.intersection(tokens) or any(tok.startswith(_TASK_PREFIXES[t]) for tok in tokens)}


def _column_role(header: str) -> str | None:
    """``image``, ``mos``, a dimension, ``prompt``, ``ref``, ``lq``, ``model``, ``task``, ``ignore`` or None."""
    tokens = _tokens(header)
    norm = "_".join(tokens)
    if norm in _EXACT_ROLES:
        return _EXACT_ROLES[norm]
    words = set(tokens)
    if not tokens or norm.startswith("unnamed") or words & _STAT_TOKENS:
        return "ignore"
    if "lq" in words or {"low", "quality"} <= words:
        return "lq"
    if words & {"ref", "reference"}:
        return "ref"
    if "id" in words and len(words) > 1 and not (words - {"id"}) <= _ID_COMPANIONS:
        return "image" if words & {"image", "img", "file"} else "ignore"  # an identifier, not identity
    dims = _dims_of(tokens)
    if len(dims) == 1:
        return dims.pop()
    if words & {"model", "method", "generator"}:
        return "model"
    if words & {"prompt", "caption", "text"}:
        return "prompt"
    if "task" in words:
        return "task"
    if words & {"mos", "score", "rating"}:
        return "mos"
    if words & {"image", "img", "filename", "file", "name", "path"}:
        return "image"
    return None


def _model_of(rel: Path) -> str | None:
    """The nearest folder of an image (under images/) that is not a task or a generic name."""
    for folder in reversed(rel.parent.parts):
        if folder.lower() not in _GENERIC_FOLDERS and not _tasks_of(_tokens(folder)):
            return folder
    return None


def _is_empty(cell: Any) -> bool:
    if cell is None:
        return True
    if isinstance(cell, numbers.Real):
        return math.isnan(float(cell))
    return isinstance(cell, str) and cell.strip().lower() in _EMPTY_CELLS


def _number(cell: Any) -> float | None:
    if isinstance(cell, bool) or _is_empty(cell):
        return None
    if isinstance(cell, numbers.Real):
        value = float(cell)
        return value if math.isfinite(value) else None
    if isinstance(cell, str):
        s = cell.strip()
        for candidate in (s, s.replace(",", ".") if s.count(",") == 1 and "." not in s else None):
            if candidate is None:
                continue
            try:
                value = float(candidate)
            except ValueError:
                continue
            return value if math.isfinite(value) else None
    return None


def _text(cell: Any) -> str | None:
    if _is_empty(cell):
        return None
    if isinstance(cell, numbers.Real) and not isinstance(cell, bool) and float(cell).is_integer():
        return str(int(cell))  # a numeric name read from a spreadsheet: 12.0 -> "12"
    return str(cell).strip()
