"""Stub of ComfyUI's ``folder_paths``: model folders by name, file listing and lookup.

Lookups normalise names the way ComfyUI does (``os.path.relpath(os.path.join("/", name), "/")``), so
``../`` cannot climb out of a folder through this API. ``set_base(path)`` points the stub at a folder.
"""

from __future__ import annotations

import os

supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}

base_path = os.path.abspath(os.environ.get("COMFY_STUB_BASE", "."))
models_dir = os.path.join(base_path, "models")
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}


def set_base(path: str) -> None:
    """Start over with ``path`` as ComfyUI's base folder (``models/``, ``input/``, ``temp/`` inside it)."""
    global base_path, models_dir
    base_path = os.path.abspath(path)
    models_dir = os.path.join(base_path, "models")
    folder_names_and_paths.clear()
    folder_names_and_paths["checkpoints"] = ([os.path.join(models_dir, "checkpoints")], supported_pt_extensions)


def get_temp_directory() -> str:
    return os.path.join(base_path, "temp")


def get_input_directory() -> str:
    return os.path.join(base_path, "input")


def get_output_directory() -> str:
    return os.path.join(base_path, "output")


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    if folder_name in folder_names_and_paths:
        paths, _ = folder_names_and_paths[folder_name]
        if full_folder_path in paths:
            if is_default and paths[0] != full_folder_path:
                paths.remove(full_folder_path)
                paths.insert(0, full_folder_path)
        elif is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)
    else:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())


def get_folder_paths(folder_name: str) -> list[str]:
    return folder_names_and_paths[folder_name][0][:]


def _walk(directory: str) -> list[str]:
    out = []
    if not os.path.isdir(directory):
        return out
    for dirpath, subdirs, filenames in os.walk(directory, followlinks=True, topdown=True):
        subdirs[:] = [d for d in subdirs if d != ".git"]
        out.extend(os.path.relpath(os.path.join(dirpath, f), directory) for f in filenames)
    return out


def get_filename_list(folder_name: str) -> list[str]:
    paths, exts = folder_names_and_paths[folder_name]
    found: set[str] = set()
    for p in paths:
        found.update(f for f in _walk(p) if not exts or os.path.splitext(f)[-1].lower() in exts)
    return sorted(found)


def get_full_path(folder_name: str, filename: str) -> str | None:
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for x in folder_names_and_paths[folder_name][0]:
        full_path = os.path.join(x, filename)
        if os.path.isfile(full_path):
            return full_path
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    full_path = get_full_path(folder_name, filename)
    if full_path is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return full_path
