"""Finding a checkpoint: a local folder, a hub id of a feval checkpoint, or a plain VLM (zero-shot)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .config import ADAPTERS_DIR, CONFIG_NAME, FEvalConfig
from .errors import CheckpointError

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy", ".npz", ".joblib"})
HUB_PATTERNS = [CONFIG_NAME, "projectors.safetensors", f"{ADAPTERS_DIR}/*/adapter_config.json",
                f"{ADAPTERS_DIR}/*/adapter_model.safetensors"]


def scan_for_pickles(folder: Path) -> None:
    """Refuse a checkpoint folder that contains pickle-based files anywhere (feval loads safetensors only)."""
    found = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                   if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file())
    if found:
        raise CheckpointError(
            f"{folder} contains pickle-based files ({', '.join(found[:5])}); feval never unpickles files from a "
            "checkpoint. Remove them (or re-save the weights as safetensors in a trusted environment) and retry."
        )


def zero_shot_config(base_model: str) -> FEvalConfig:
    return FEvalConfig(base_model=base_model, mode="zero_shot", score_mode="levels")


def resolve_checkpoint(path_or_id: str | Path, **hub_kwargs: Any) -> tuple[Path | None, FEvalConfig]:
    """Return (local folder or None, config). A VLM without ``feval_config.json`` becomes a zero-shot scorer."""
    src = str(path_or_id)
    path = Path(src).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; pass the checkpoint folder that holds {CONFIG_NAME}")
        path = path.resolve()
        if (path / CONFIG_NAME).is_file():
            return path, FEvalConfig.load(path)
        if (path / "config.json").is_file():
            logger.info("%s has no %s: scoring zero-shot with it as the base VLM", path, CONFIG_NAME)
            return None, zero_shot_config(str(path))
        raise CheckpointError(f"{path} has neither {CONFIG_NAME} (a feval checkpoint) nor config.json (a VLM)")
    if src.startswith((".", "/", "~")) or src.count("/") != 1:
        raise CheckpointError(f"{src!r} is not a folder here and not a hub id like 'org/name'; check the path")
    return _from_hub(src, **hub_kwargs)


def _from_hub(repo_id: str, **hub_kwargs: Any) -> tuple[Path | None, FEvalConfig]:
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        config_file = hf_hub_download(repo_id, CONFIG_NAME, **hub_kwargs)
    except LocalEntryNotFoundError as exc:
        raise CheckpointError(
            f"cannot reach the hub for {repo_id!r} and it is not in the local cache ({exc}). Download it on a "
            "connected machine (`huggingface-cli download ...`) or pass a local folder."
        ) from exc
    except EntryNotFoundError:  # (LocalEntryNotFoundError, a subclass, is caught above)
        logger.info("%s has no %s: scoring zero-shot with it as the base VLM", repo_id, CONFIG_NAME)
        return None, zero_shot_config(repo_id)
    config = FEvalConfig.load(config_file)
    patterns = list(HUB_PATTERNS)
    for rel in (config.base_model, config.face.root):  # folders shipped inside the checkpoint repo
        if rel and not Path(rel).is_absolute() and ".." not in Path(rel).parts and rel.count("/") == 0:
            patterns.append(f"{rel}/**")
    folder = Path(snapshot_download(repo_id, allow_patterns=patterns, **hub_kwargs))
    return folder, FEvalConfig.load(folder)
