"""The FaceQ download on disk: its ``images/`` and ``MOSs/`` folders, its score files, and an index of its images."""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from ...errors import ManifestError
from .names import _tasks_of, _tokens

logger = logging.getLogger(__name__)

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
TABLE_EXTS = frozenset({".csv", ".tsv", ".txt", ".xlsx", ".xls", ".json", ".jsonl"})
_SKIP_EXTS = frozenset({".md", ".pdf", ".doc", ".docx", ".html", ".htm", ".rtf", ".log"}) | IMAGE_EXTS
_SKIP_STEMS = frozenset({"readme", "license", "licence", "notes", "changelog"})
_IMAGES_DIRS = ("images", "image", "imgs", "img")
_MOS_DIRS = ("moss", "mos", "mos_s", "scores")


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
