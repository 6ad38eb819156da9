"""Node "Load F-Eval model": a checkpoint from models/feval, a hub id, or zero-shot on a base VLM."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from comfy_api.latest import io

from feval_core import FEvalError, FEvalScorer
from feval_core.model.config import CONFIG_NAME, FEvalConfig

from . import paths
from .patcher import (
    DEVICE_AUTO,
    DTYPES,
    FEvalHandle,
    device_options,
    pick_dtype,
    placement,
)
from .sockets import CATEGORY, FEvalModel

logger = logging.getLogger(__name__)

SOURCE_LOCAL = "models folder"
SOURCE_HUB = "hub id"
SOURCE_ZERO_SHOT = "zero-shot (base VLM)"
SOURCES = (SOURCE_LOCAL, SOURCE_HUB, SOURCE_ZERO_SHOT)


class LoadFEvalModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FEvalModelLoader",
            display_name="Load F-Eval model",
            category=CATEGORY,
            description="Loads the F-Eval face scorer: quality, authenticity, identity and correspondence, each "
                        "on 0-100 (higher is better). The model moves to the GPU only while it scores and is "
                        "unloaded by ComfyUI like any other model.",
            inputs=[
                io.Combo.Input("source", options=list(SOURCES), default=SOURCE_LOCAL,
                               tooltip="'models folder': a checkpoint in models/feval. 'hub id': a feval checkpoint "
                                       "on the Hugging Face hub (downloaded into models/feval/hub-cache). "
                                       "'zero-shot': a plain VLM (hub id, or a VLM folder in models/feval) scored "
                                       "with rating words; identity then uses ArcFace similarity."),
                io.Combo.Input("checkpoint", options=paths.list_checkpoints(),
                               tooltip="Folder in models/feval: a feval checkpoint (feval_config.json) or a base "
                                       "VLM (config.json) for zero-shot scoring."),
                io.String.Input("hub_id", default="",
                                tooltip="For 'hub id': a feval checkpoint id. For zero-shot: the base VLM id, e.g. "
                                        "Qwen/Qwen2.5-VL-7B-Instruct (empty = the selected local folder)."),
                io.Combo.Input("face_pack", options=[paths.AUTO_PACK, *paths.list_face_packs()],
                               default=paths.AUTO_PACK,
                               tooltip="insightface pack in models/insightface/models. 'auto': the pack the "
                                       "checkpoint was trained with (buffalo_l for zero-shot). Never downloaded."),
                io.Combo.Input("device", options=device_options(), default=DEVICE_AUTO,
                               tooltip="Where the model scores; 'auto' is ComfyUI's device. Face detection runs "
                                       "there too when onnxruntime supports it."),
                io.Combo.Input("dtype", options=[DEVICE_AUTO, *DTYPES], default=DEVICE_AUTO,
                               tooltip="'auto': bfloat16 on GPUs that support it, else float16; float32 on the CPU."),
            ],
            outputs=[FEvalModel.Output("model", display_name="model")],
        )

    @classmethod
    def execute(cls, source: str, checkpoint: str, hub_id: str = "", face_pack: str = paths.AUTO_PACK,
                device: str = DEVICE_AUTO, dtype: str = DEVICE_AUTO) -> io.NodeOutput:
        load_device, offload_device = placement(device)
        common = dict(device=str(offload_device), dtype=pick_dtype(dtype, load_device), face_device=str(load_device))
        if face_pack != paths.AUTO_PACK and face_pack not in paths.list_face_packs():
            raise ValueError(f"face pack {face_pack!r} is not in models/insightface/models; "
                             + paths.missing_pack_message(face_pack))
        if source == SOURCE_LOCAL:
            folder = paths.resolve_checkpoint(checkpoint)
            name = checkpoint
            if (folder / CONFIG_NAME).is_file():
                root = _checkpoint_face_root(FEvalConfig.load(folder), face_pack, folder)
                scorer = FEvalScorer.from_pretrained(folder, face_root=root, **common)
            else:
                scorer = _zero_shot(str(folder), face_pack, common)
        elif source == SOURCE_HUB:
            name = paths.check_hub_id(hub_id)
            cache = str(paths.hub_cache_dir())
            pack = paths.DEFAULT_ZERO_SHOT_PACK if face_pack == paths.AUTO_PACK else face_pack
            scorer = _from_hub(name, lambda: FEvalScorer.from_pretrained(name, face_root=_face_root(pack),
                                                                         cache_dir=cache, **common))
        elif source == SOURCE_ZERO_SHOT:
            if (hub_id or "").strip():
                name = paths.check_hub_id(hub_id)
                cache = str(paths.hub_cache_dir())
                scorer = _from_hub(name, lambda: _zero_shot(name, face_pack, common, cache_dir=cache))
            else:
                folder = paths.resolve_checkpoint(checkpoint)
                if (folder / CONFIG_NAME).is_file():
                    raise ValueError(f"{checkpoint!r} is a feval checkpoint, not a base VLM: use source "
                                     f"'{SOURCE_LOCAL}', or give a base VLM's hub id for zero-shot scoring")
                name = checkpoint
                scorer = _zero_shot(str(folder), face_pack, common)
        else:
            raise ValueError(f"source must be one of {list(SOURCES)}, got {source!r}")
        mode = "trained" if scorer.model.trained else "zero-shot"
        logger.info("F-Eval model %s loaded (%s, loads on %s)", name, mode, load_device)
        return io.NodeOutput(FEvalHandle.wrap(scorer, name, load_device, offload_device))


def _from_hub(repo_id: str, load: Callable[[], FEvalScorer]) -> FEvalScorer:
    """Run ``load`` (which reads ``repo_id`` through the hub cache in models/feval) with a helpful error."""
    cache = paths.hub_cache_dir()
    logger.info("loading %s through the Hugging Face hub cache %s", repo_id, cache)
    try:
        return load()
    except FEvalError:
        raise
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OSError(f"could not load {repo_id!r} from the Hugging Face hub or from {cache} ({first}). Check the id "
                      f"and the network, or download it beforehand: huggingface-cli download {repo_id} "
                      f"--cache-dir {cache}") from exc


def _face_root(pack: str) -> Path:
    """The insightface root holding ``pack``; else the first root, so errors name where it belongs."""
    return paths.face_pack_root(pack) or paths.face_roots()[0]


def _checkpoint_face_root(config: FEvalConfig, face_pack: str, folder: Path) -> Path | None:
    """None when the checkpoint ships its own pack; else the insightface root with the checkpoint's pack."""
    pack = config.face.pack
    if face_pack not in (paths.AUTO_PACK, pack):
        raise ValueError(f"this checkpoint was trained on face embeddings from the {pack!r} pack; choose "
                         f"face_pack 'auto' or {pack!r}")
    shipped = config.face.root
    if shipped and not Path(shipped).is_absolute() and (folder / shipped / "models" / pack).is_dir():
        return None
    return _face_root(pack)


def _zero_shot(base: str, face_pack: str, common: dict, **hub_kwargs: str) -> FEvalScorer:
    pack = paths.DEFAULT_ZERO_SHOT_PACK if face_pack == paths.AUTO_PACK else face_pack
    return FEvalScorer.zero_shot(base, face_pack=pack, face_root=_face_root(pack), hub_kwargs=hub_kwargs, **common)
