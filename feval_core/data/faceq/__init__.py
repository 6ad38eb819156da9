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

import importlib.util  # noqa: F401  # kept: tests patch faceq.importlib.util.find_spec, which tables.py looks up per call
import logging
import os
from pathlib import Path

from ...errors import ManifestError
from ..manifest import TASKS, ManifestRow, write_manifest
from .builder import _Builder
from .layout import IMAGE_EXTS, TABLE_EXTS, _ImageIndex, _locate, _mos_files
from .tables import _read_tables
from .values import SCALES

__all__ = ["IMAGE_EXTS", "SCALES", "TABLE_EXTS", "import_faceq"]

logger = logging.getLogger(__name__)


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
