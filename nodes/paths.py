"""Where the pack's models live in ComfyUI: the ``feval`` and ``insightface`` model folders.

Checkpoints are folders (``models/feval/<name>/feval_config.json``, or a plain VLM folder with
``config.json`` for zero-shot scoring); face packs are ``models/insightface/models/<pack>/*.onnx``, the
layout other face packs for ComfyUI use. Both folders can be moved with ComfyUI's
``extra_model_paths.yaml`` (keys ``feval:`` and ``insightface:``). A name that comes from a graph is
looked up through ``folder_paths`` and must stay inside those folders once symlinks are resolved.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

import folder_paths

from feval_core.model.config import CONFIG_NAME, VIDEO_CONFIG_NAME

logger = logging.getLogger(__name__)

FEVAL_FOLDER = "feval"
FACE_FOLDER = "insightface"
HUB_CACHE = "hub-cache"
VIDEO_NODE = "Score face video (FVQ-Rater)"
NO_CHECKPOINT = "(none)"
"""The checkpoint choice for graphs that load from the hub: always offered, so such a graph is valid on every disk."""
OLD_NO_CHECKPOINT = "(no checkpoints in models/feval)"  # what graphs saved by earlier versions store
AUTO_PACK = "auto"
DEFAULT_ZERO_SHOT_PACK = "buffalo_l"
_VLM_CONFIG = "config.json"
_PACK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def register_folders() -> None:
    """Add ``models/feval`` and ``models/insightface`` to ComfyUI's model folders (idempotent)."""
    for name in (FEVAL_FOLDER, FACE_FOLDER):
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))


def _roots(folder: str) -> list[Path]:
    register_folders()
    return [Path(p) for p in folder_paths.get_folder_paths(folder)]


def feval_roots() -> list[Path]:
    """The folders that hold feval checkpoints, in lookup order."""
    return _roots(FEVAL_FOLDER)


def face_roots() -> list[Path]:
    """The insightface roots (each holds ``models/<pack>/``), in lookup order."""
    return _roots(FACE_FOLDER)


def hub_cache_dir() -> Path:
    """Where hub downloads go: ``models/feval/hub-cache`` (never a hidden cache elsewhere)."""
    return feval_roots()[0] / HUB_CACHE


def _is_cache_path(rel: str) -> bool:
    parts = PurePosixPath(rel.replace("\\", "/")).parts
    return bool(parts) and (parts[0] == HUB_CACHE or any(p.startswith("models--") for p in parts))


def list_checkpoints() -> list[str]:
    """Checkpoint folders (relative names) found in the feval model folders (empty when none)."""
    register_folders()
    files = [f for f in folder_paths.get_filename_list(FEVAL_FOLDER) if not _is_cache_path(f)]
    videos = {os.path.dirname(f) for f in files if os.path.basename(f) == VIDEO_CONFIG_NAME}
    ckpts = sorted({os.path.dirname(f) for f in files if os.path.basename(f) == CONFIG_NAME} - {""})
    inside = tuple(c + os.sep for c in ckpts)
    ckpts = [c for c in ckpts if c not in videos]  # video checkpoints belong to the face-video node
    vlms = sorted({os.path.dirname(f) for f in files if os.path.basename(f) == _VLM_CONFIG} - {""} - set(ckpts))
    vlms = [v for v in vlms if not (v + os.sep).startswith(inside)]
    return ckpts + vlms


def _inside(path: Path, roots: list[Path]) -> bool:
    real = path.resolve()
    return any(real.is_relative_to(r.resolve()) for r in roots)


def resolve_checkpoint(name: str) -> Path:
    """The folder of checkpoint ``name`` (a name from :func:`list_checkpoints`), resolved and checked.

    Raises ValueError for a path instead of a name (absolute, drive letter, ``..``), FileNotFoundError
    when no such checkpoint exists, PermissionError when it resolves outside the feval folders.
    """
    roots = feval_roots()
    where = ", ".join(str(r) for r in roots)
    if not name or name in (NO_CHECKPOINT, OLD_NO_CHECKPOINT):
        raise FileNotFoundError(f"no feval checkpoint selected: put a checkpoint folder (with {CONFIG_NAME}) "
                                f"or a base VLM folder into {where} and refresh, or use source 'hub id'")
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(name).drive or ".." in posix.parts:
        raise ValueError(f"checkpoint {name!r} must be the name of a folder inside {where}, not a path")
    for marker in (CONFIG_NAME, _VLM_CONFIG):
        try:
            found = Path(folder_paths.get_full_path_or_raise(FEVAL_FOLDER, f"{name}/{marker}"))
        except FileNotFoundError:
            continue
        if not (_inside(found.parent, roots) and _inside(found, roots)):
            raise PermissionError(
                f"checkpoint {name!r} resolves to {found.resolve().parent}, outside the feval model folders "
                f"({where}); a link may not lead out of them. Add its real location to extra_model_paths.yaml "
                "under 'feval:' instead.")
        if (found.parent / VIDEO_CONFIG_NAME).is_file():
            raise ValueError(f"checkpoint {name!r} is a face-video checkpoint ({VIDEO_CONFIG_NAME}): it scores videos, "
                             f"not images. Pick it in the '{VIDEO_NODE}' node; here pick an F-Eval image checkpoint")
        return found.parent.resolve()
    raise FileNotFoundError(f"no checkpoint {name!r} in {where}: expected a folder with {CONFIG_NAME} "
                            f"(a feval checkpoint) or {_VLM_CONFIG} (a base VLM for zero-shot scoring)")


def check_hub_id(repo_id: str) -> str:
    """``repo_id`` if it looks like a hub id ``org/name``; local paths are refused (use the models folder)."""
    repo_id = (repo_id or "").strip()
    if not _HUB_ID.match(repo_id) or ".." in repo_id:
        raise ValueError(f"hub_id must be a Hugging Face id like 'Qwen/Qwen2.5-VL-7B-Instruct', got {repo_id!r}; "
                         "for a local folder put it into models/feval and use source 'models folder'")
    return repo_id


def list_face_packs() -> list[str]:
    """insightface packs (folders with .onnx files) under ``<root>/models/`` of every insightface root."""
    packs: set[str] = set()
    for root in face_roots():
        models = root / "models"
        if models.is_dir():
            packs.update(d.name for d in models.iterdir() if d.is_dir() and _PACK_NAME.match(d.name)
                         and any(d.glob("*.onnx")))
    return sorted(packs)


def check_pack_name(pack: str) -> str:
    """``pack`` if it is a plain folder name (never a path out of the insightface folder); else ValueError."""
    if not isinstance(pack, str) or not _PACK_NAME.match(pack):
        raise ValueError(f"face pack {pack!r} must be a folder name like 'buffalo_l' in models/insightface/models, "
                         "not a path")
    return pack


def require_face_pack(pack: str) -> Path:
    """The insightface root that holds ``pack``; ValueError for a bad name, FileNotFoundError (with where to get
    it) when it is not installed. The name is checked before any message is built from it."""
    root = face_pack_root(pack)
    if root is None:
        raise FileNotFoundError(missing_pack_message(pack))
    return root


def face_pack_root(pack: str) -> Path | None:
    """The insightface root that holds ``models/<pack>``, or None."""
    check_pack_name(pack)
    for root in face_roots():
        pack_dir = root / "models" / pack
        if pack_dir.is_dir() and any(pack_dir.glob("*.onnx")):
            if not _inside(pack_dir, face_roots()):
                raise PermissionError(f"face pack {pack!r} resolves to {pack_dir.resolve()}, outside {root}")
            return root
    return None


def missing_pack_message(pack: str) -> str:
    """How to install ``pack`` (a name already checked by :func:`check_pack_name`)."""
    check_pack_name(pack)
    where = " or ".join(str(r / "models" / pack) for r in face_roots())
    return (f"insightface pack {pack!r} not found: download {pack}.zip from the insightface model zoo "
            f"(github.com/deepinsight/insightface, releases) and unzip it so that {where} holds its .onnx files")


def list_model_folders(config_name: str) -> list[str]:
    """Folders under the feval model folders that hold ``config_name`` (e.g. ``fiqa_config.json``)."""
    register_folders()
    files = folder_paths.get_filename_list(FEVAL_FOLDER)
    return sorted({str(PurePosixPath(f.replace("\\", "/")).parent) for f in files
                   if PurePosixPath(f.replace("\\", "/")).name == config_name} - {"."})


def resolve_model_folder(name: str, config_name: str, what: str, command: str, unset: tuple[str, ...] = ()) -> Path:
    """The folder of model ``name`` (holding ``config_name``), which must stay inside the feval model folders.
    ``name`` empty, :data:`NO_CHECKPOINT` or one of ``unset`` (what older graphs stored) means none was chosen."""
    roots = feval_roots()
    where = ", ".join(str(r) for r in roots)
    if not name or name == NO_CHECKPOINT or name in unset:
        raise FileNotFoundError(f"no {what} selected: put a folder with {config_name} (from `{command}`) into "
                                f"{where} and refresh")
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(name).drive or ".." in posix.parts:
        raise ValueError(f"{what} {name!r} must be the name of a folder inside {where}, not a path")
    try:
        found = Path(folder_paths.get_full_path_or_raise(FEVAL_FOLDER, f"{name}/{config_name}"))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{what} {name!r} not found: {_other_kind(name, config_name)}") from exc
    if not all(any(p.resolve().is_relative_to(r.resolve()) for r in roots) for p in (found, found.parent)):
        raise PermissionError(f"{what} {name!r} resolves outside the feval model folders ({where})")
    return found.parent.resolve()


MODEL_KINDS = {  # the file that marks each kind of model folder (most specific first), and where it belongs
    VIDEO_CONFIG_NAME: f"a face-video checkpoint: pick it in the '{VIDEO_NODE}' node",
    "fiqa_config.json": "a ViT-FIQA model: pick it in the 'Face utility (ViT-FIQA)' node",
    "prefilter_config.json": "a landmark pre-filter: pick it in the 'Face quick check (landmark pre-filter)' node",
    CONFIG_NAME: "an F-Eval image checkpoint: load it with the 'Load F-Eval model' node",
}


def _other_kind(name: str, config_name: str) -> str:
    """Why folder ``name`` (already checked to be a plain name) is not a ``config_name`` model, and what to do."""
    for marker, kind in MODEL_KINDS.items():
        if marker == config_name:
            continue
        try:
            found = Path(folder_paths.get_full_path_or_raise(FEVAL_FOLDER, f"{name}/{marker}"))
        except FileNotFoundError:
            continue
        if _inside(found, feval_roots()):
            return f"that folder is {kind}"
    return f"no folder with {config_name} by that name in {', '.join(str(r) for r in feval_roots())}"


def check_model_folder(name: str | None, resolve) -> bool | str:
    """A node's ``validate_inputs`` answer for a model-folder combo: True, or why not (None: linked, checked later)."""
    if name is None:
        return True
    try:
        resolve(name)
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        return str(exc)
    return True

