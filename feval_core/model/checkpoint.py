"""Finding a checkpoint: a local folder, a hub id of a feval checkpoint, or a plain VLM (zero-shot)."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError
from .config import (
    ADAPTERS_DIR,
    CONFIG_NAME,
    PROJECTORS_NAME,
    VIDEO_CONFIG_NAME,
    VISION_PROJECTOR_NAME,
    PICKLE_SUFFIXES,
    FEvalConfig,
    read_json_object,
)

logger = logging.getLogger(__name__)

ADAPTER_CONFIG_NAME = "adapter_config.json"
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit
REFUSED_ADAPTER_KEYS: dict[str, str] = {
    "megatron_config": "it makes PEFT import a Python module named in the file",
    "modules_to_save": "it replaces whole backbone modules, and feval experts are LoRA only",
    "trainable_token_indices": "it rewrites token embeddings of the frozen backbone",
    "layer_replication": "it changes the layer structure of the backbone",
}
"""adapter_config.json keys that must be null/empty in a feval expert, and why."""
HUB_PATTERNS = [CONFIG_NAME, PROJECTORS_NAME, VISION_PROJECTOR_NAME, VIDEO_CONFIG_NAME,
                f"{ADAPTERS_DIR}/*/adapter_config.json", f"{ADAPTERS_DIR}/*/adapter_model.safetensors"]
"""The small files of a checkpoint on the hub; the folders it ships (backbone, face pack, ...) are added by name."""


def scan_for_pickles(folder: Path) -> None:
    """Refuse a checkpoint folder that contains pickle-based files anywhere (feval loads safetensors only)."""
    found = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                   if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file())
    if found:
        raise CheckpointError(
            f"{folder} contains pickle-based files ({', '.join(found[:5])}); feval never unpickles files from a "
            "checkpoint. Remove them (or re-save the weights as safetensors in a trusted environment) and retry."
        )


def check_links(folder: Path) -> None:
    """Refuse symbolic links in a checkpoint that lead outside it (or loop, or dangle outside).

    A shared checkpoint could otherwise make feval read any file of yours, and ``save_pretrained`` copy it
    into a folder you may share in turn. Links into the checkpoint itself are fine, and so are the links of a
    Hugging Face cache snapshot (or of a folder inside one) into its repository's ``blobs/`` folder.
    """
    folder = Path(folder)
    roots = [folder.resolve()]
    for snap in (folder, *folder.parents):  # the snapshot itself or a folder in it (e.g. an encoder it ships)
        if snap.parent.name == "snapshots" and (snap.parent.parent / "blobs").is_dir():
            roots.append((snap.parent.parent / "blobs").resolve())
            break
    for dirpath, dirnames, filenames in os.walk(folder):  # linked folders are listed, never entered
        for name in dirnames + filenames:
            link = Path(dirpath) / name
            if not link.is_symlink():
                continue
            rel = link.relative_to(folder)
            try:
                target = link.resolve()
            except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
                raise CheckpointError(f"{folder}: {rel} is a symlink that cannot be resolved ({exc}); "
                                      "remove it") from exc
            if not any(target == r or target.is_relative_to(r) for r in roots):
                raise CheckpointError(
                    f"{folder}: {rel} is a symlink to {target}, outside the checkpoint folder; feval does not "
                    "follow links out of a checkpoint. Copy the files in, or set base_model / face.root in "
                    f"{CONFIG_NAME} to the absolute folder instead.")


def check_adapter_config(path: Path) -> dict[str, Any]:
    """Read and validate one expert's ``adapter_config.json`` before PEFT sees it; return the parsed object."""
    path = Path(path)
    data = read_json_object(path, "an adapter config")
    problems = []
    if data.get("peft_type") != "LORA":
        problems.append(f"peft_type must be 'LORA', got {data.get('peft_type')!r}")
    r = data.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= 1024:
        problems.append(f"r must be an integer in 1..1024, got {r!r}")
    alpha = data.get("lora_alpha")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha) or alpha <= 0:
        problems.append(f"lora_alpha must be a positive number, got {alpha!r}")
    targets = data.get("target_modules")
    if not (targets is None or isinstance(targets, str)
            or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))):
        problems.append(f"target_modules must be a regex string or a list of module names, got {targets!r}")
    for key, why in REFUSED_ADAPTER_KEYS.items():
        if data.get(key) not in (None, [], {}):
            problems.append(f"{key} must be null ({why})")
    if problems:
        raise ConfigError(f"{path} is not a feval LoRA expert: {'; '.join(problems)}")
    return data


def check_safetensors_header(path: Path) -> None:
    """Refuse a ``.safetensors`` file that is not one: bad header, or data that does not fill the file exactly.

    Catches corrupt, truncated and renamed files (a pickle saved as ``.safetensors``) with a clear message
    before any loader sees them; reads only the header.
    """
    path = Path(path)
    size = path.stat().st_size
    reason = None
    with path.open("rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= n <= min(size - 8, MAX_SAFETENSORS_HEADER):
            reason = "no safetensors header"
        else:
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, ValueError, RecursionError):
                header = None
            if not isinstance(header, dict):
                reason = "its header is not a JSON object"
            else:
                offsets = [v.get("data_offsets") if isinstance(v, dict) else None
                           for k, v in header.items() if k != "__metadata__"]
                ends = [o[-1] if isinstance(o, list) and o else None for o in offsets]
                if not all(isinstance(e, int) for e in ends) or max(ends, default=0) != size - 8 - n:
                    reason = "its tensors do not fill the file (truncated or padded)"
    if reason:
        raise CheckpointError(f"{path} is not a valid safetensors file ({reason}): corrupt, truncated, or another "
                              "format renamed. Re-download or re-save the checkpoint.")


def check_checkpoint_tree(folder: Path) -> None:
    """Everything feval checks in a checkpoint folder before reading any of it.

    No symlinks out of the folder, no pickle-based files anywhere, readable safetensors headers and
    valid expert configs.
    """
    folder = Path(folder)
    check_links(folder)
    scan_for_pickles(folder)
    for st in sorted(folder.rglob("*.safetensors")):
        check_safetensors_header(st)
    adapters = folder / ADAPTERS_DIR
    if adapters.is_dir():
        for cfg in sorted(adapters.glob(f"*/{ADAPTER_CONFIG_NAME}")):
            check_adapter_config(cfg)


def zero_shot_config(base_model: str) -> FEvalConfig:
    return FEvalConfig(base_model=base_model, mode="zero_shot", score_mode="levels")


def refuse_video_checkpoint(folder: Path, name: str | Path) -> None:
    """An image scorer given a video checkpoint: say so, and what scores videos with it."""
    if (Path(folder) / VIDEO_CONFIG_NAME).is_file():
        raise CheckpointError(
            f"{name} is a face-video checkpoint ({VIDEO_CONFIG_NAME}): it scores videos, not images. Score videos "
            f"with it: `feval score CLIP.mp4 --model {name}` or feval_core.video.VideoScorer.from_pretrained(...) "
            "(ComfyUI: the 'Score face video (FVQ-Rater)' node); for images use an F-Eval image checkpoint.")


def resolve_checkpoint(path_or_id: str | Path, **hub_kwargs: Any) -> tuple[Path | None, FEvalConfig]:
    """Return (local folder or None, config). A VLM without ``feval_config.json`` becomes a zero-shot scorer.
    A video checkpoint is refused with what to use instead."""
    src = str(path_or_id)
    path = Path(src).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; pass the checkpoint folder that holds {CONFIG_NAME}")
        if (path / CONFIG_NAME).exists() or (path / CONFIG_NAME).is_symlink():
            check_checkpoint_tree(path)
            refuse_video_checkpoint(path, src)
            path = path.resolve()
            return path, FEvalConfig.load(path)
        path = path.resolve()
        if (path / "config.json").is_file():
            logger.info("%s has no %s: scoring zero-shot with it as the base VLM", path, CONFIG_NAME)
            return None, zero_shot_config(str(path))
        raise CheckpointError(f"{path} has neither {CONFIG_NAME} (a feval checkpoint) nor config.json (a VLM)")
    check_hub_id(src)
    return _from_hub(src, **hub_kwargs)


def check_hub_id(src: str) -> str:
    """``src`` when it reads as a hub id ``org/name``; else the error for a path that is not there."""
    if src.startswith((".", "/", "~")) or src.count("/") != 1:
        raise CheckpointError(f"{src!r} is not a folder here and not a hub id like 'org/name'; check the path")
    return src


def hub_snapshot(repo_id: str, patterns: list[str], **hub_kwargs: Any) -> Path:
    """The files of hub repo ``repo_id`` matching ``patterns`` (downloaded, or from the cache when
    ``HF_HUB_OFFLINE=1``), checked like a local checkpoint folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=patterns, **hub_kwargs))
    except LocalEntryNotFoundError as exc:
        raise CheckpointError(
            f"cannot reach the hub for {repo_id!r} and it is not in the local cache ({exc}). Download it on a "
            "connected machine (`huggingface-cli download ...`) or pass a local folder."
        ) from exc
    check_checkpoint_tree(folder)
    return folder


def shipped_folders(*names: str | None) -> list[str]:
    """Hub patterns for the folders a checkpoint ships (plain relative names one level deep: ``backbone``)."""
    return [f"{rel}/**" for rel in names
            if rel and not Path(rel).is_absolute() and ".." not in Path(rel).parts and rel.count("/") == 0]


def _from_hub(repo_id: str, **hub_kwargs: Any) -> tuple[Path | None, FEvalConfig]:
    from huggingface_hub import hf_hub_download
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
    refuse_video_checkpoint(hub_snapshot(repo_id, HUB_PATTERNS, **hub_kwargs), repo_id)  # before the big folders
    folder = hub_snapshot(repo_id, HUB_PATTERNS + shipped_folders(config.base_model, config.face.root), **hub_kwargs)
    return folder, FEvalConfig.load(folder)


def checkpoint_kind(path_or_id: str | Path | None, **hub_kwargs: Any) -> str | None:
    """``"video"`` or ``"image"`` for a feval checkpoint (a local folder, or a hub id: its small files only);
    None when it is neither or cannot be read (the loader then says why)."""
    if not path_or_id:
        return None
    path = Path(str(path_or_id)).expanduser()
    if path.exists():
        folder = path
    else:
        try:
            folder = hub_snapshot(check_hub_id(str(path_or_id)), HUB_PATTERNS, **hub_kwargs)
        except (CheckpointError, OSError, ValueError) as exc:
            logger.debug("%s: not a readable hub checkpoint (%s)", path_or_id, exc)
            return None
    if (folder / VIDEO_CONFIG_NAME).is_file():
        return "video"
    return "image" if (folder / CONFIG_NAME).is_file() else None


@dataclass
class TrainedWeights:
    """The trained parts of a checkpoint folder: heads (``projectors.safetensors``), the experts' folder
    (``adapters/``) and, when the config says it was trained, the vision projector."""

    heads: dict[str, Any] | None = None
    adapters: Path | None = None
    vision_projector: dict[str, Any] | None = None

    @classmethod
    def load(cls, folder: Path, config: FEvalConfig) -> TrainedWeights:
        """Read them (safetensors only; the folder is scanned for pickles first)."""
        scan_for_pickles(folder)
        if config.mode != "trained":
            return cls()
        from safetensors.torch import load_file

        needed = [PROJECTORS_NAME] + ([VISION_PROJECTOR_NAME] if config.vision_projector == "trained" else [])
        for name in needed:
            if not (folder / name).is_file():
                raise CheckpointError(f"{folder} is a trained checkpoint but has no {name}; re-save it with "
                                      "save_pretrained")
        vision = load_file(str(folder / VISION_PROJECTOR_NAME)) if config.vision_projector == "trained" else None
        return cls(load_file(str(folder / PROJECTORS_NAME)), folder / ADAPTERS_DIR, vision)

    @staticmethod
    def save(model: Any, out: Path) -> None:
        """Write a trained model's heads, experts and (when trained) vision projector into ``out``; refused for a
        model whose vision expert was merged into the tower for scoring (its LoRA weights are gone)."""
        from safetensors.torch import save_file

        model.check_unmerged("save it as a checkpoint")

        from .experts import save_experts

        def plain(module: Any) -> dict[str, Any]:
            return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}

        save_file(plain(model.heads), str(out / PROJECTORS_NAME), metadata={"format": "pt"})
        if model.config.vision_projector == "trained":
            save_file(plain(model.vision_projector), str(out / VISION_PROJECTOR_NAME), metadata={"format": "pt"})
        save_experts(model.backbone, out / ADAPTERS_DIR)
