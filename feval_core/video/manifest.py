"""Video manifests (JSON Lines: ``{"video": "clips/a.mp4", "mos": 63.2, "split"?: "train"|"val"|"test"}``, paths
relative to the manifest's folder; MOS on 0..100) and the FVQ-20K importer.

FVQ-20K's score file is read as CSV (or whitespace-separated text, or JSON) with a name column and a MOS column;
known header names are listed in :data:`NAME_COLUMNS` / :data:`MOS_COLUMNS`. A file that has neither is refused
with the headers it has, rather than guessed at.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.manifest import json_lines, summarise_errors
from ..data.splits import SPLITS, split_rows
from ..errors import ManifestError
from ..inputs.results import json_line

NAME_COLUMNS = ("video", "video_name", "name", "filename", "file", "path")
MOS_COLUMNS = ("mos", "score", "mos_score", "label")
SPLIT_COLUMNS = ("split", "set", "subset")
FVQ_FRACTIONS = (0.80, 0.05, 0.15)
"""FVQ-20K's split: 80% train, 5% validation, 15% test."""


@dataclass(frozen=True)
class VideoRow:
    video: Path
    mos: float
    split: str | None = None
    line: int = 0


def read_video_manifest(path: str | os.PathLike[str], *, check_files: bool = True) -> list[VideoRow]:
    """Read and check a video manifest; every bad line is reported at once."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest; write one with `feval video import-fvq` or by hand (JSON Lines "
                            '{"video": ..., "mos": ...})')
    base, rows, errors = path.parent.resolve(), [], []
    for n, obj, bad in json_lines(path):
        if bad:
            errors.append(f"line {n}: {bad}")
            continue
        row, problem = _row(obj, base, n, check_files)
        if problem:
            errors.append(f"line {n}: {problem}")
        else:
            rows.append(row)
    if errors:
        raise ManifestError(summarise_errors(f"{path}: {len(errors)} bad rows", errors))
    if not rows:
        raise ManifestError(f"{path} has no rows")
    return rows


def manifest_kind(path: str | os.PathLike[str], *, expect: str | None = None) -> str:
    """``"video"`` when the manifest's rows have a ``"video"`` key, ``"image"`` when they do not; a manifest with
    both kinds is refused, and so is the other kind when ``expect`` names one. Lines that are not JSON objects are
    left to the manifest readers, which report them."""
    path = Path(path)
    first: dict[str, int] = {}
    for n, obj, _ in json_lines(path):
        if isinstance(obj, dict):
            first.setdefault("video" if "video" in obj else "image", n)
    if len(first) == 2:
        raise ManifestError(f"{path} mixes image rows (line {first['image']}) and video rows with a \"video\" key "
                            f"(line {first['video']}); put them in two manifests and train an image checkpoint and a "
                            "video checkpoint (`feval train --manifest videos.jsonl --temporal-model ...`) apart")
    kind = next(iter(first), "image")
    if expect is not None and kind != expect:
        hint = ('rows like {"video": "clips/a.mp4", "mos": 63.2}' if expect == "video"
                else 'rows like {"image": "a.png", "task": "generation", "mos": {...}}')
        raise ManifestError(f"{path} is {'a video' if kind == 'video' else 'an image'} manifest, but this needs "
                            f"{'a video' if expect == 'video' else 'an image'} manifest ({hint})")
    return kind


def _row(obj: Any, base: Path, n: int, check_files: bool) -> tuple[VideoRow | None, str | None]:
    if not isinstance(obj, dict) or not isinstance(obj.get("video"), str) or not obj["video"]:
        return None, 'each line must be an object with "video" (a path) and "mos" (0..100)'
    mos = obj.get("mos")
    if isinstance(mos, dict):
        mos = mos.get("video_quality", mos.get("quality"))
    if not isinstance(mos, (int, float)) or isinstance(mos, bool) or not math.isfinite(mos) or not 0 <= mos <= 100:
        return None, f"mos must be a number in 0..100, got {obj.get('mos')!r} (rescale 1-5 ratings with (x-1)*25)"
    split = obj.get("split")
    if split is not None and split not in SPLITS:
        return None, f"split must be one of {SPLITS}, got {split!r}"
    video = Path(obj["video"]) if Path(obj["video"]).is_absolute() else base / obj["video"]
    if check_files and not video.exists():
        return None, f"{video} does not exist"
    return VideoRow(video, float(mos), split, n), None


def write_video_manifest(rows: Iterable[VideoRow], path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    base = path.parent.resolve()
    lines = []
    for r in rows:
        v = Path(r.video)
        rel = os.path.relpath(v, base) if v.is_absolute() else str(v)
        lines.append(json_line({"video": rel, "mos": r.mos, **({"split": r.split} if r.split else {})}))
    path.write_text("".join(lines), encoding="utf-8")
    return path


def _table(score_file: Path) -> tuple[list[str], list[list[str]]]:
    text = score_file.read_text(encoding="utf-8-sig")
    if score_file.suffix.lower() == ".json":
        data = json.loads(text)
        if isinstance(data, dict):  # {"name": mos, ...}
            return ["name", "mos"], [[k, str(v)] for k, v in data.items()]
        if isinstance(data, list) and data and all(isinstance(d, dict) for d in data):
            header = list(data[0])
            return header, [[str(d.get(h, "")) for h in header] for d in data]
        raise ManifestError(f"{score_file}: a JSON score file must be an object name -> MOS or a list of objects")
    if score_file.suffix.lower() in (".csv", ".tsv") or "," in text.splitlines()[0]:
        table = list(csv.reader(text.splitlines(), delimiter="\t" if score_file.suffix.lower() == ".tsv" else ","))
    else:
        table = [line.split() for line in text.splitlines() if line.strip()]
    return [h.strip() for h in table[0]], [r for r in table[1:] if r]


def import_fvq(score_file: str | os.PathLike[str], videos: str | os.PathLike[str], out: str | os.PathLike[str], *,
               seed: int = 0, scale: float | None = None) -> list[VideoRow]:
    """Turn FVQ-20K's score file and video folder into a manifest with its 80/5/15 split (kept from the file when
    it has a split column, else drawn with ``seed``). ``scale`` multiplies the MOS (e.g. 20 for 0-5 ratings)."""
    score_file, videos = Path(score_file), Path(videos)
    if not score_file.is_file():
        raise ManifestError(f"{score_file}: no such score file; pass FVQ-20K's released score file (CSV/TXT/JSON)")
    header, table = _table(score_file)
    low = [h.lower() for h in header]
    name_col = next((low.index(c) for c in NAME_COLUMNS if c in low), None)
    mos_col = next((low.index(c) for c in MOS_COLUMNS if c in low), None)
    split_col = next((low.index(c) for c in SPLIT_COLUMNS if c in low), None)
    if name_col is None or mos_col is None:
        raise ManifestError(f"{score_file}: unknown layout: columns {header}; feval reads a name column "
                            f"({', '.join(NAME_COLUMNS)}) and a MOS column ({', '.join(MOS_COLUMNS)}). Rename the "
                            "header, or convert the file to a manifest yourself")
    rows, missing = [], []
    for line, r in enumerate(table, 2):
        try:
            mos = float(r[mos_col]) * (scale or 1.0)
        except (ValueError, IndexError) as exc:
            raise ManifestError(f"{score_file} line {line}: MOS {r[mos_col] if len(r) > mos_col else ''!r} is not a "
                                "number") from exc
        if not 0 <= mos <= 100:
            raise ManifestError(f"{score_file} line {line}: MOS {mos} is outside 0..100; pass scale= (e.g. 20 for "
                                "0-5 ratings)")
        video = videos / r[name_col]
        if not video.exists():
            missing.append(r[name_col])
            continue
        split = r[split_col].lower() if split_col is not None and len(r) > split_col else None
        rows.append(VideoRow(video.resolve(), mos, {"validation": "val"}.get(split, split) if split else None, line))
    if missing:
        raise ManifestError(f"{len(missing)} videos of {score_file} are not in {videos} (e.g. {missing[:3]}); "
                            "point --videos at the folder that holds them")
    if any(r.split not in SPLITS for r in rows):
        rows = _random_split(rows, seed)
    write_video_manifest(rows, out)
    return rows


def _random_split(rows: list[VideoRow], seed: int) -> list[VideoRow]:
    """FVQ-20K's 80/5/15 split drawn with the image side's :func:`~feval_core.data.splits.split_rows` (every split
    gets at least one clip), in the rows' order."""
    parts = split_rows(rows, fractions=FVQ_FRACTIONS, seed=seed, by=None)  # type: ignore[arg-type]
    split = {id(r): name for name, part in parts.items() for r in part}
    return [VideoRow(r.video, r.mos, split[id(r)], r.line) for r in rows]
