"""Module paths from before the rooms (``feval_core.images``, ``feval_core.scorer``, ...) keep importing,
with a :class:`DeprecationWarning` that names the new path. One table; no stub files."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from typing import Any

MOVED: dict[str, tuple[str, ...]] = {
    "images": ("inputs.images",),
    "pipeline": ("inputs.prefetch",),
    "results": ("inputs.results",),
    "config": ("model.config",),
    "checkpoint": ("model.checkpoint",),
    "backbone": ("model.backbone",),
    "modules": ("model.heads",),
    "experts": ("model.experts",),
    "batching": ("model.batching",),
    "vision_attention": ("model.vision_attention",),
    "differentiable": ("model.preprocess", "faces.align"),
    "scorer": ("scoring.scorer", "scoring.result"),
    "distributed": ("scoring.distributed",),
    "manifest": ("data.manifest",),
    "faceq": ("data.faceq",),
    "splits": ("data.splits",),
    "metrics": ("evaluate.metrics",),
    "bench": ("evaluate.bench",),
    "train_config": ("train.config",),
    "train_data": ("train.data",),
    "train_state": ("train.state",),
    "tiny": ("testing.tiny",),
    "facepack": ("testing.facepack",),
    "synthetic": ("testing.synthetic",),
    "train_cli": ("cli.train",),
    "eval_cli": ("cli.eval",),
    "bench_cli": ("cli.bench",),
    "data_cli": ("cli.data",),
}
"""Old module name (under ``feval_core``) -> the module(s) now holding its names. ``feval_core.model``,
``.faces``, ``.train``, ``.evaluate`` and ``.cli`` are packages now and export their old public names."""

_PACKAGE = __name__.rpartition(".")[0]


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        prefix, _, leaf = fullname.rpartition(".")
        if prefix != _PACKAGE or leaf not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        targets = [f"{_PACKAGE}.{t}" for t in MOVED[spec.name.rpartition(".")[2]]]
        warnings.warn(f"{spec.name} moved to {' and '.join(targets)}; import from there (the old path will go "
                      "away)", DeprecationWarning, stacklevel=2)
        modules = [importlib.import_module(t) for t in targets]
        if len(modules) == 1:
            return modules[0]
        merged = types.ModuleType(spec.name, f"Names of {spec.name}, now in {', '.join(targets)}.")
        for mod in modules:
            merged.__dict__.update({k: v for k, v in vars(mod).items() if not k.startswith("__")})
        return merged

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
