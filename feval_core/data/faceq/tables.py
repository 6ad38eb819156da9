"""Reading score files into tables of cells: CSV / TSV / TXT (delimiter sniffed), Excel workbooks, JSON."""

from __future__ import annotations

import csv
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ManifestError
from .names import _tokens
from .values import _is_empty, _number


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
