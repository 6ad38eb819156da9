"""JSON Lines manifests of opinion scores for training and evaluation.

One JSON object per line::

    {"image": "images/gen/SDXL/001.png", "task": "generation", "prompt": "a portrait of ...",
     "model": "SDXL", "mos": {"quality": 64.9, "authenticity": 29.3, "correspondence": 69.0}}

``ref`` (reference face) and ``lq`` (low-quality input of a restoration) are optional paths. Relative paths
are relative to the manifest's folder; absolute paths are allowed. MOS values are on 0..100.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..dimensions import DIM_INDEX, DIMENSIONS
from ..errors import ManifestError

logger = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("generation", "customization", "restoration")
MAX_REPORTED_ERRORS = 20
_KNOWN_KEYS = frozenset({"image", "task", "prompt", "ref", "lq", "model", "mos"})
_RESCALE_HINT = "MOS must be on 0..100; rescale 1-5 ratings with (x-1)*25 and 0-5 ratings with x*20"


@dataclass(frozen=True)
class ManifestRow:
    """One rated image. Paths are absolute once read from a manifest; ``line`` is its 1-based line there."""

    image: Path
    task: str
    mos: dict[str, float]
    prompt: str | None = None
    ref: Path | None = None
    lq: Path | None = None
    model: str | None = None
    line: int = 0


def json_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any, str | None]]:
    """``(line number, object, None)`` for each non-blank line of a JSON Lines file, or ``(n, None, why)`` for a line
    that is not JSON: the one reader of image and video manifests and prompt files (a UTF-8 BOM is accepted)."""
    with Path(path).open(encoding="utf-8-sig") as fh:
        for lineno, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                yield lineno, json.loads(text), None
            except json.JSONDecodeError as exc:
                yield lineno, None, f"invalid JSON ({exc.msg} at column {exc.colno})"


def summarise_errors(header: str, errors: list[str]) -> str:
    """One message for many bad lines: the header, the count and the first :data:`MAX_REPORTED_ERRORS`."""
    shown = errors[:MAX_REPORTED_ERRORS]
    more = len(errors) - len(shown)
    tail = f"\n  ... and {more} more" if more else ""
    return f"{header} ({len(errors)} problem{'s' * (len(errors) != 1)}):\n  " + "\n  ".join(shown) + tail


def read_manifest(path: str | os.PathLike[str], *, check_files: bool = True) -> list[ManifestRow]:
    """Read and validate a manifest; every invalid line is reported in one :class:`ManifestError`.

    ``check_files`` also requires ``image``, ``ref`` and ``lq`` to exist.
    """
    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path} (expected a JSON Lines file, one object per line)")
    base = path.parent
    rows: list[ManifestRow] = []
    errors: list[str] = []
    unknown_keys: set[str] = set()
    for lineno, obj, bad in json_lines(path):
        if bad:
            errors.append(f"{path}:{lineno}: {bad}; each line must hold one complete JSON object")
            continue
        row, problems = _row_from_obj(obj, base, lineno)
        if isinstance(obj, dict):
            unknown_keys.update(k for k in obj if k not in _KNOWN_KEYS)
        if row is not None:
            problems += row_problems(row, check_files=check_files)
            rows.append(row)
        errors += [f"{path}:{lineno}: {p}" for p in problems]
    if unknown_keys:
        logger.warning("%s: ignoring unknown keys %s (known: %s)", path, sorted(unknown_keys), sorted(_KNOWN_KEYS))
    if errors:
        raise ManifestError(summarise_errors(f"manifest {path} has invalid rows", errors))
    if not rows:
        raise ManifestError(
            f"manifest {path} has no rows; write one JSON object per line, e.g. "
            '{"image": "a.png", "task": "generation", "prompt": "...", "mos": {"quality": 62.5}}')
    logger.info("read %d rows from %s", len(rows), path)
    return rows


def write_manifest(rows: Iterable[ManifestRow], path: str | os.PathLike[str]) -> None:
    """Validate ``rows`` and write them as JSON Lines (atomically).

    Paths under the manifest's folder are written relative to it, others absolute; relative paths held by a
    row are taken relative to the current directory.
    """
    path = Path(path).expanduser().absolute()
    rows = list(rows)
    if not rows:
        raise ManifestError(f"refusing to write an empty manifest to {path}; pass at least one row")
    validate_rows(rows, source=str(path), check_files=False)
    base = path.parent
    lines = [json.dumps(row_to_dict(r, base), ensure_ascii=False) for r in rows]
    base.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    logger.info("wrote %d rows to %s", len(rows), path)


def validate_rows(rows: Iterable[ManifestRow], *, source: str = "rows", check_files: bool = True) -> None:
    """Raise one :class:`ManifestError` listing the problems of every invalid row (``source`` names them)."""
    errors: list[str] = []
    for i, row in enumerate(rows, start=1):
        where = f"{source}:{row.line or i}"
        errors += [f"{where}: {p}" for p in row_problems(row, check_files=check_files)]
    if errors:
        raise ManifestError(summarise_errors(f"{source} has invalid rows", errors))


def row_problems(row: ManifestRow, *, check_files: bool = False) -> list[str]:
    """The problems of one row, as messages that say how to fix each; empty when the row is valid."""
    problems: list[str] = []
    if row.task not in TASKS:
        problems.append(f"unknown task {row.task!r}; valid tasks: {', '.join(TASKS)}")
    if not isinstance(row.mos, Mapping) or not row.mos:
        problems.append(f'"mos" must be a non-empty object of dimension: score, dimensions: {", ".join(DIMENSIONS)}')
        return problems
    for dim, value in row.mos.items():
        if dim not in DIM_INDEX:
            problems.append(f"unknown dimension {dim!r} in mos{_did_you_mean(dim)}; "
                            f"valid dimensions: {', '.join(DIMENSIONS)}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"mos[{dim!r}] = {value!r} is not a number")
        elif not math.isfinite(value):
            problems.append(f"mos[{dim!r}] is {value}; leave the dimension out instead of writing NaN/Infinity")
        elif not 0.0 <= value <= 100.0:
            problems.append(f"mos[{dim!r}] = {value} is outside 0..100; {_RESCALE_HINT}")
    if "correspondence" in row.mos and not row.prompt:
        problems.append('correspondence MOS needs a "prompt" (the text the image was generated from)')
    if "identity" in row.mos and row.ref is None and row.lq is None:
        problems.append('identity MOS needs "ref" (reference face) or "lq" (low-quality input of a restoration)')
    if check_files:
        for key in ("image", "ref", "lq"):
            p = getattr(row, key)
            if p is not None and not Path(p).is_file():
                problems.append(f"{key} file not found: {p}")
    return problems


def row_to_dict(row: ManifestRow, base: Path | None = None) -> dict[str, Any]:
    """The JSON object of a row; paths under ``base`` become relative POSIX paths."""
    out: dict[str, Any] = {"image": _rel(row.image, base), "task": row.task}
    if row.prompt is not None:
        out["prompt"] = row.prompt
    if row.ref is not None:
        out["ref"] = _rel(row.ref, base)
    if row.lq is not None:
        out["lq"] = _rel(row.lq, base)
    if row.model is not None:
        out["model"] = row.model
    out["mos"] = {d: float(row.mos[d]) for d in sorted(row.mos, key=lambda d: DIM_INDEX.get(d, len(DIM_INDEX)))}
    return out


def _row_from_obj(obj: Any, base: Path, line: int) -> tuple[ManifestRow | None, list[str]]:
    """Type-check one parsed JSON value and build its row (semantic checks are in :func:`row_problems`)."""
    if not isinstance(obj, dict):
        return None, [f"expected a JSON object, got {type(obj).__name__}"]
    problems: list[str] = []
    image = obj.get("image")
    if image is None:
        problems.append('missing "image" (path of the rated image, relative to the manifest\'s folder)')
    elif not isinstance(image, str) or not image.strip():
        problems.append(f'"image" must be a non-empty path string, got {image!r}')
    task = obj.get("task")
    if task is None:
        problems.append(f'missing "task"; use one of {", ".join(TASKS)}')
    elif not isinstance(task, str):
        problems.append(f'"task" must be a string, one of {", ".join(TASKS)}; got {task!r}')
    strings: dict[str, str | None] = {}
    for key in ("prompt", "ref", "lq", "model"):
        value = obj.get(key)
        if value is not None and not isinstance(value, str):
            problems.append(f'"{key}" must be a string, got {value!r}')
            value = None
        strings[key] = value if value else None
    mos = obj.get("mos")
    if mos is None:
        problems.append(f'missing "mos" (object of dimension: score on 0..100; dimensions: {", ".join(DIMENSIONS)})')
    elif not isinstance(mos, dict):
        problems.append(f'"mos" must be an object like {{"quality": 62.5}}, got {type(mos).__name__}')
    if problems:
        return None, problems
    ref, lq = strings["ref"], strings["lq"]
    row = ManifestRow(
        image=_resolve(base, image), task=task, mos=dict(mos), prompt=strings["prompt"],
        ref=_resolve(base, ref) if ref else None, lq=_resolve(base, lq) if lq else None,
        model=strings["model"], line=line)
    return row, []


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _rel(p: Path | str, base: Path | None) -> str:
    p = Path(p).expanduser().absolute()
    if base is not None:
        try:
            return p.relative_to(base).as_posix()
        except ValueError:
            pass
    return str(p)


def _did_you_mean(name: str) -> str:
    aliases = {"id": "identity", "id_fidelity": "identity", "identity_fidelity": "identity",
               "alignment": "correspondence", "consistency": "correspondence"}
    if name.lower() in aliases:
        return f" (did you mean {aliases[name.lower()]!r}?)"
    close = difflib.get_close_matches(str(name).lower(), DIMENSIONS, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def reference_of(row: ManifestRow) -> Path | None:
    """The reference face of a row for identity: ``ref``, or for a restoration without one, its ``lq`` input."""
    if row.ref is not None:
        return row.ref
    return row.lq if row.task == "restoration" else None
