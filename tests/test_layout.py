"""The layout holds: rooms import only lower rooms, modules and functions stay small, old paths still import."""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "feval_core"
ROOMS = ("inputs", "faces", "model", "data", "scoring", "evaluate", "train", "fiqa", "video", "testing", "serve",
         "cli")
"""feval_core's rooms, lowest first: a room imports only the base modules and the rooms before it."""
BASE = frozenset({"errors", "dimensions", "questions", "_lazy", "_moved"})
ROOT_NAMES = {"FEvalScorer": "feval_core.scoring", "ScoreResult": "feval_core.scoring",
              "FEvalConfig": "feval_core.model"}
"""Names ``feval_core`` exports lazily from a room: importing them from the facade is importing that room."""
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _room(module: str) -> str:
    """``feval_core.model.lmm`` -> ``model``; base modules -> their own name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every feval_core module ``path`` imports (relative ones resolved), at any depth, with its line."""
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    package = parts if parts[-1] == "__init__" else parts[:-1]
    if package[-1] == "__init__":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
            if names == ["feval_core"]:  # the facade: its lazy names live in rooms
                names = [ROOT_NAMES.get(a.name, "feval_core") for a in node.names]
            found += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, n) for line, n in found if n.split(".")[0] in ("feval_core", "reward", "nodes")]


def _core_modules() -> list[Path]:
    return sorted(p for p in CORE.rglob("*.py") if p != CORE / "__init__.py")


@pytest.mark.parametrize("path", _core_modules(), ids=lambda p: str(p.relative_to(CORE)))
def test_rooms_import_only_lower_rooms(path: Path) -> None:
    room = _room(".".join(path.relative_to(REPO).with_suffix("").parts))
    rank = ROOMS.index(room) if room in ROOMS else -1
    bad = []
    for line, target in _imports(path):
        if target.split(".")[0] != "feval_core":
            bad.append(f"line {line}: {target} (feval_core never imports reward or nodes)")
            continue
        other = _room(target)
        if other in BASE or other == room or other == "":
            continue
        if other not in ROOMS or ROOMS.index(other) > rank:
            bad.append(f"line {line}: {target}")
    assert not bad, f"{path.relative_to(REPO)} ({room or 'base'}) imports higher rooms: {bad}"


def test_every_room_says_what_it_holds() -> None:
    for room in ROOMS:
        init = CORE / room / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 80, f"{init} needs a docstring saying what lives there and what it may import"


def _sources() -> list[Path]:
    return sorted(p for d in ("feval_core", "nodes", "reward") for p in (REPO / d).rglob("*.py"))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_modules_and_functions_stay_small(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path.relative_to(REPO)}: split it along its seams"
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(ast.parse(text))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.relative_to(REPO)}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_importing_feval_core_and_its_rooms_imports_no_torch() -> None:
    code = ("import sys, feval_core, feval_core.inputs, feval_core.faces, feval_core.model, feval_core.scoring, "
            "feval_core.data, feval_core.evaluate, feval_core.train, feval_core.train.config, feval_core.testing, "
            "feval_core.fiqa; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize("old, name", [
    ("feval_core.images", "load_image"), ("feval_core.scorer", "FEvalScorer"), ("feval_core.scorer", "ScoreResult"),
    ("feval_core.config", "FEvalConfig"), ("feval_core.train_config", "TrainConfig"), ("feval_core.tiny",
                                                                                      "make_tiny_checkpoint"),
    ("feval_core.differentiable", "aligned_face_crops"), ("feval_core.differentiable", "pixel_values_from_tensors"),
    ("feval_core.metrics", "srcc"), ("feval_core.manifest", "read_manifest"), ("feval_core.facepack", "draw_tiny_face"),
])
def test_old_module_paths_import_with_a_deprecation_warning(old: str, name: str) -> None:
    import importlib

    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert callable(getattr(module, name)) or isinstance(getattr(module, name), type)
    assert any(issubclass(w.category, DeprecationWarning) and "moved to" in str(w.message) for w in caught)


@pytest.mark.parametrize("package, name", [
    ("feval_core.train", "TrainConfig"), ("feval_core.train", "train"), ("feval_core.model", "FEvalModel"),
    ("feval_core.model", "Row"), ("feval_core.faces", "FaceEncoder"), ("feval_core.faces", "arcface_identity_score"),
    ("feval_core.evaluate", "evaluate"), ("feval_core.cli", "main"),
])
def test_old_modules_that_became_rooms_still_export_their_names(package: str, name: str) -> None:
    import importlib

    assert getattr(importlib.import_module(package), name) is not None
