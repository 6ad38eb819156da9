"""Resumable training state in ``<run>/state/``: trainable weights, optimizer, RNGs and position (safetensors
and JSON only; feval never unpickles). Written atomically: a crash while saving keeps the previous state.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError

STATE_DIR = "state"
STATE_FILE = "trainer_state.json"
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"


@dataclass
class TrainerState:
    """Where a run stands: optimizer steps, epoch, micro-batch within it; saved as ``trainer_state.json``."""

    step: int
    epoch: int
    micro_in_epoch: int
    micro_steps: int
    num_processes: int
    rng: dict[str, Any] = field(default_factory=dict)  # Python and NumPy global RNGs (torch's are in rng_*.safetensors)

    def save(self, folder: Path) -> None:
        (folder / STATE_FILE).write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> TrainerState:
        path = folder / STATE_FILE
        fix = f"delete {folder} to start the run over, or pass another --out"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read {path} ({exc}); {fix}") from exc
        ints = [f.name for f in fields(cls) if f.name != "rng"]
        if not isinstance(data, dict) or any(type(data.get(k)) is not int or data[k] < 0 for k in ints) \
                or not isinstance(data.get("rng", {}), dict):
            raise ConfigError(f"{path} is not a feval trainer state (needs non-negative integers {ints}); {fix}")
        return cls(**{k: data[k] for k in ints}, rng=data.get("rng", {}))


def save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    from safetensors.torch import save_file

    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{idx}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    save_file(tensors, str(folder / OPTIMIZER_FILE),
              metadata={"param_groups": json.dumps(sd["param_groups"]), "scalars": json.dumps(scalars)})


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(folder / OPTIMIZER_FILE), "pt") as f:
        meta = f.metadata() or {}
        state: dict[int, dict[str, Any]] = {}
        for key in f.keys():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = f.get_tensor(key)
    for idx, extra in json.loads(meta.get("scalars", "{}")).items():
        state.setdefault(int(idx), {}).update(extra)
    groups = json.loads(meta["param_groups"])
    for g in groups:  # JSON has no tuples; torch's own state dicts keep e.g. AdamW's betas as one
        for k, v in g.items():
            if k != "params" and isinstance(v, list):
                g[k] = tuple(v)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(legacy=False)}


def _json_rng(state: dict[str, Any]) -> dict[str, Any]:
    """Python and NumPy global RNG states as plain JSON."""
    py = state["python"]
    npy = state["numpy"]
    return {"python": [py[0], list(py[1]), py[2]],
            "numpy": {"key": npy["state"]["key"].tolist(), "pos": int(npy["state"]["pos"]),
                      "has_gauss": int(npy["has_gauss"]), "gauss": float(npy["gauss"])}}


def _restore_json_rng(data: dict[str, Any]) -> None:
    py = data["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = data["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "has_gauss": npy["has_gauss"], "gauss": npy["gauss"],
                         "state": {"key": np.asarray(npy["key"], dtype=np.uint32), "pos": npy["pos"]}})


def save_state(folder: Path, model: Any, optimizer: Any, accelerator: Any, step: int, epoch: int,
                micro_in_epoch: int) -> None:
    """Write resumable state (safetensors + JSON) atomically: build ``state.tmp`` then swap it in."""
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rank = accelerator.process_index
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(tmp / f"rng_{rank}.safetensors"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        named = {n: p.detach().contiguous().cpu() for n, p in model.trainable_parameters()}
        save_file(named, str(tmp / TRAINABLE_FILE))
        save_optimizer(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer, tmp)
        TrainerState(step, epoch, micro_in_epoch, accelerator.step, accelerator.num_processes,
                     _json_rng(_rng_state())).save(tmp)
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_state(folder: Path, model: Any, optimizer: Any, accelerator: Any) -> TrainerState:
    """Restore the weights, optimizer and RNGs that :func:`save_state` wrote; returns where the run stands."""
    from safetensors.torch import load_file

    state = TrainerState.load(folder)
    if state.num_processes != accelerator.num_processes:
        raise ConfigError(f"the saved state is from {state.num_processes} processes but this run has "
                          f"{accelerator.num_processes}; resume with the same number of processes")
    saved = load_file(str(folder / TRAINABLE_FILE))
    named = dict(model.trainable_parameters())
    if set(saved) != set(named):
        raise ConfigError(f"saved state in {folder} does not match this model (different experts or ranks); resume "
                          "with the settings that started the run (see its train_config.json), or start a new run")
    with torch.no_grad():
        for n, p in named.items():
            p.copy_(saved[n].to(p.device, p.dtype))
    load_optimizer(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer, folder)
    rng_file = folder / f"rng_{accelerator.process_index}.safetensors"
    if rng_file.is_file():
        rng = load_file(str(rng_file))
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    if state.rng:
        _restore_json_rng(state.rng)
    return state

