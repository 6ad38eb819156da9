"""Node "Load F-Eval model": a checkpoint from models/feval, a hub id, or zero-shot on a base VLM."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _Plan:
    """What the loader's inputs ask for, checked without loading anything."""

    kind: str  # "checkpoint" (a folder in models/feval: a feval checkpoint or a base VLM), "hub" or "zero_shot_hub"
    name: str  # the checkpoint name or the hub id
    folder: Path | None = None


def plan_load(source: str, checkpoint: str | None, hub_id: str | None, face_pack: str | None) -> _Plan:
    """Check the loader's inputs the way a run uses them; raises ValueError / FileNotFoundError / PermissionError
    with the fix. ``checkpoint`` matters only where it is used (models folder; zero-shot without a hub id)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {list(SOURCES)}, got {source!r}")
    if face_pack is not None and face_pack != paths.AUTO_PACK:
        paths.require_face_pack(face_pack)  # the name first, then whether it is installed
    hub = (hub_id or "").strip()
    if source == SOURCE_HUB:
        return _Plan("hub", paths.check_hub_id(hub))
    if source == SOURCE_ZERO_SHOT and hub:
        return _Plan("zero_shot_hub", paths.check_hub_id(hub))
    folder = paths.resolve_checkpoint(checkpoint or "")
    if source == SOURCE_ZERO_SHOT and (folder / CONFIG_NAME).is_file():
        raise ValueError(f"{checkpoint!r} is a feval checkpoint, not a base VLM: use source '{SOURCE_LOCAL}', or give "
                         "a base VLM's hub id for zero-shot scoring")
    return _Plan("checkpoint", str(checkpoint), folder)


class LoadFEvalModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        ckpts = paths.list_checkpoints()
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
                io.Combo.Input("checkpoint", options=[*ckpts, paths.NO_CHECKPOINT],
                               default=ckpts[0] if ckpts else paths.NO_CHECKPOINT,
                               tooltip="Folder in models/feval: a feval checkpoint (feval_config.json) or a base "
                                       f"VLM (config.json) for zero-shot scoring. '{paths.NO_CHECKPOINT}' with a hub "
                                       "id; ignored when the hub id is used."),
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
                               tooltip="'auto': bfloat16 on GPUs that support it, else float32 (float16 overflows "
                                       "Qwen-VL activations); float32 on the CPU."),
            ],
            outputs=[FEvalModel.Output("model", display_name="model")],
        )

    @classmethod
    def validate_inputs(cls, source: str, checkpoint: str, hub_id: str = "",
                        face_pack: str = paths.AUTO_PACK) -> bool | str:
        """ComfyUI's check before a run (V3's ``validate_inputs``; ComfyUI then skips its own list check for these
        inputs). The checkpoint is checked only where the source uses it, so a graph saved for the hub stays valid
        whatever models/feval holds. A value that comes through a link is None here and is checked at run time."""
        uses_checkpoint = source != SOURCE_HUB and not (hub_id or "").strip()
        if source is None or hub_id is None or (checkpoint is None and uses_checkpoint):
            return True  # linked: known only at run time, where execute checks it
        try:
            plan_load(source, checkpoint, hub_id, face_pack)
        except (ValueError, FileNotFoundError, PermissionError) as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, source: str, checkpoint: str, hub_id: str = "", face_pack: str = paths.AUTO_PACK,
                device: str = DEVICE_AUTO, dtype: str = DEVICE_AUTO) -> io.NodeOutput:
        plan = plan_load(source, checkpoint, hub_id, face_pack)
        load_device, offload_device = placement(device)
        common = dict(device=str(offload_device), dtype=pick_dtype(dtype, load_device), face_device=str(load_device))
        name = plan.name
        if plan.kind == "hub":
            cache = str(paths.hub_cache_dir())
            pack = paths.DEFAULT_ZERO_SHOT_PACK if face_pack == paths.AUTO_PACK else face_pack
            scorer = _from_hub(name, lambda: FEvalScorer.from_pretrained(name, face_root=_face_root(pack),
                                                                         cache_dir=cache, **common))
        elif plan.kind == "zero_shot_hub":
            cache = str(paths.hub_cache_dir())
            scorer = _from_hub(name, lambda: _zero_shot(name, face_pack, common, cache_dir=cache))
        elif (plan.folder / CONFIG_NAME).is_file():
            root = _checkpoint_face_root(FEvalConfig.load(plan.folder), face_pack, plan.folder)
            scorer = FEvalScorer.from_pretrained(plan.folder, face_root=root, **common)
        else:
            scorer = _zero_shot(str(plan.folder), face_pack, common)
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
