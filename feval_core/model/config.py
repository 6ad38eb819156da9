"""``feval_config.json``: the one config of a saved F-Eval checkpoint, validated on load."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..dimensions import DIMENSIONS
from ..errors import ConfigError

logger = logging.getLogger(__name__)

C = TypeVar("C")

CONFIG_NAME = "feval_config.json"
PROJECTORS_NAME = "projectors.safetensors"
VISION_PROJECTOR_NAME = "vision_projector.safetensors"
ADAPTERS_DIR = "adapters"
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy", ".npz", ".joblib", ".sav",
                             ".dill"})
"""Suffixes of pickle-based files: feval never unpickles them (one list for every loader that refuses them)."""
VIDEO_CONFIG_NAME = "video_config.json"
"""Beside ``feval_config.json``, makes a checkpoint a face-video model (read by :mod:`feval_core.video.config`)."""
FORMAT_VERSION = 1
MAX_CONFIG_BYTES = 256 * 1024
MAX_JSON_DEPTH = 8
"""Deepest nesting of objects/lists accepted in a config file (feval's own configs use 3)."""
MAX_STRING = 4096

MODES = ("zero_shot", "trained")
SCORE_MODES = ("levels", "regression", "mean")
ROUTINGS = ("explicit", "router")
DEFAULT_LORA_TARGETS = r".*language_model.*\.(gate_proj|up_proj|down_proj)"
VISION_EXPERTS = ("none", "shared", "per_dimension")
DEFAULT_VISION_LORA_TARGETS = (r".*(visual\.blocks|vision_tower\..*(encoder|layers?))\..*\."
                               r"(qkv|proj|q_proj|k_proj|v_proj|out_proj|projection_layer|fc1|fc2|gate_proj|up_proj|"
                               r"down_proj)")
"""Linear layers of the vision tower (Qwen2-VL/2.5-VL ``visual.blocks``, InternVL and CLIP/SigLIP encoders); the
vision projector (Qwen's merger, LLaVA/InternVL's multi_modal_projector) is trained whole, not through LoRA."""
VISION_PROJECTOR_STATES = ("frozen", "trained")


@dataclass
class FaceEncoderConfig:
    """Which insightface model pack detects and embeds faces."""

    pack: str = field(default="buffalo_l", metadata={"help": "insightface pack name (folder under <root>/models)"})
    root: str | None = field(default=None, metadata={
        "help": "insightface root; relative paths are relative to the checkpoint; None uses $FEVAL_FACE_ROOT "
                "or ~/.insightface"})
    det_size: int = field(default=640, metadata={"help": "detector input size (square)"})
    det_thresh: float = field(default=0.5, metadata={"help": "detection score threshold"})

    def __post_init__(self) -> None:
        if (not isinstance(self.pack, str) or not self.pack or "/" in self.pack or "\\" in self.pack
                or ".." in self.pack):
            raise ConfigError(f"face.pack must be a plain folder name like 'buffalo_l', got {self.pack!r}")
        if self.root is not None and (not isinstance(self.root, str) or not self.root or len(self.root) > MAX_STRING):
            raise ConfigError(f"face.root must be a folder path or null, got {self.root!r}")
        if not _is_int(self.det_size) or not 32 <= self.det_size <= 4096 or self.det_size % 32:
            raise ConfigError(f"face.det_size must be a multiple of 32 in 32..4096, got {self.det_size!r}")
        if not _is_number(self.det_thresh) or not 0.0 < float(self.det_thresh) < 1.0:
            raise ConfigError(f"face.det_thresh must be a number in (0, 1), got {self.det_thresh!r}")


@dataclass
class FEvalConfig:
    """Everything needed to rebuild an F-Eval scorer around its saved weights."""

    base_model: str = field(metadata={"help": "backbone hub id, or a folder (relative to the checkpoint or absolute)"})
    mode: str = field(default="trained", metadata={
        "help": "'trained': projector + LoRA experts + heads; 'zero_shot': rating words of the base VLM and "
                "ArcFace cosine for identity"})
    score_mode: str = field(default="regression", metadata={
        "help": "'levels' (rating-word probabilities), 'regression' (head on the last hidden state) or 'mean'"})
    dims: tuple[str, ...] = field(default=DIMENSIONS, metadata={"help": "dimensions this checkpoint scores"})
    num_face_tokens: int = field(default=4, metadata={"help": "K face tokens per face (facial projector output)"})
    face_dim: int = field(default=512, metadata={"help": "face embedding size (ArcFace: 512)"})
    hidden_size: int | None = field(default=None, metadata={"help": "LLM hidden size; filled in from the backbone"})
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = field(default=0.0, metadata={
        "help": "LoRA dropout; the frozen backbone stays in eval mode (per-row experts need it), so keep 0"})
    lora_target_modules: str = field(default=DEFAULT_LORA_TARGETS, metadata={
        "help": "regex of LLM modules the LoRA experts attach to (the FFN by default, as in the paper)"})
    vision_experts: str = field(default="none", metadata={
        "help": "LoRA experts in the vision tower: 'none', 'shared' (one for every dimension: the tower still runs "
                "once per image) or 'per_dimension' (one per dimension: the tower runs once per image and dimension)"})
    vision_lora_target_modules: str = field(default=DEFAULT_VISION_LORA_TARGETS, metadata={
        "help": "regex of vision-tower modules the vision experts attach to"})
    vision_projector: str = field(default="frozen", metadata={
        "help": "'trained': the checkpoint holds its own vision projector (vision_projector.safetensors)"})
    routing: str = field(default="explicit", metadata={
        "help": "'explicit': the requested dimension picks its expert; 'router': the trained router picks it "
                "from the evaluation prompt"})
    max_image_pixels: int | None = field(default=448 * 448, metadata={
        "help": "image resolution given to the VLM (pixels), for processors that take min/max pixels"})
    trust_remote_code: bool = False
    face: FaceEncoderConfig = field(default_factory=FaceEncoderConfig)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.face, dict):
            self.face = read_json_config(FaceEncoderConfig, self.face, what="face")
        elif not isinstance(self.face, FaceEncoderConfig):
            raise ConfigError(f"face must be an object like {{\"pack\": \"buffalo_l\"}}, got {self.face!r}")
        if not isinstance(self.dims, (list, tuple)) or not all(isinstance(d, str) for d in self.dims):
            raise ConfigError(f"dims must be a list of dimension names from {DIMENSIONS}, got {self.dims!r}")
        self.dims = tuple(self.dims)
        if not isinstance(self.base_model, str) or not self.base_model.strip() or len(self.base_model) > MAX_STRING:
            raise ConfigError("base_model must name a backbone: a hub id like 'Qwen/Qwen2.5-VL-7B-Instruct' or a "
                              "folder")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.score_mode not in SCORE_MODES:
            raise ConfigError(f"score_mode must be one of {SCORE_MODES}, got {self.score_mode!r}")
        if self.routing not in ROUTINGS:
            raise ConfigError(f"routing must be one of {ROUTINGS}, got {self.routing!r}")
        if self.vision_experts not in VISION_EXPERTS:
            raise ConfigError(f"vision_experts must be one of {VISION_EXPERTS}, got {self.vision_experts!r}")
        if self.vision_projector not in VISION_PROJECTOR_STATES:
            raise ConfigError(f"vision_projector must be one of {VISION_PROJECTOR_STATES}, "
                              f"got {self.vision_projector!r}")
        bad = [d for d in self.dims if d not in DIMENSIONS]
        if bad or not self.dims or len(set(self.dims)) != len(self.dims):
            raise ConfigError(f"dims must be a non-empty subset of {DIMENSIONS} without repeats, got {list(self.dims)}")
        for name, lo, hi in (("num_face_tokens", 1, 64), ("face_dim", 1, 8192), ("lora_rank", 1, 1024),
                             ("lora_alpha", 1, 65536), ("format_version", 1, 1 << 30)):
            v = getattr(self, name)
            if not _is_int(v) or not lo <= v <= hi:
                raise ConfigError(f"{name} must be an integer in {lo}..{hi}, got {v!r}")
        if self.hidden_size is not None and (not _is_int(self.hidden_size) or self.hidden_size <= 0):
            raise ConfigError(f"hidden_size must be a positive integer, got {self.hidden_size!r}")
        if self.max_image_pixels is not None and (not _is_int(self.max_image_pixels)
                                                  or not 1 <= self.max_image_pixels <= 1 << 31):
            raise ConfigError(f"max_image_pixels must be a positive integer or null, got {self.max_image_pixels!r}")
        if not _is_number(self.lora_dropout) or not 0.0 <= float(self.lora_dropout) < 1.0:
            raise ConfigError(f"lora_dropout must be a number in [0, 1), got {self.lora_dropout!r}")
        for name in ("lora_target_modules", "vision_lora_target_modules"):
            _check_regex(name, getattr(self, name))
        if not isinstance(self.trust_remote_code, bool):
            raise ConfigError(f"trust_remote_code must be true or false, got {self.trust_remote_code!r}")
        if self.format_version > FORMAT_VERSION:
            raise ConfigError(f"this checkpoint has format_version {self.format_version}; this feval reads up to "
                              f"{FORMAT_VERSION}. Upgrade feval.")
        if self.mode == "zero_shot" and self.score_mode != "levels":
            raise ConfigError("zero_shot mode scores with rating words only: set score_mode='levels'")
        if self.mode == "zero_shot" and (self.vision_experts != "none" or self.vision_projector != "frozen"):
            raise ConfigError("zero_shot mode has no trained parts: set vision_experts='none', "
                              "vision_projector='frozen'")

    # -- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["dims"] = list(self.dims)
        return d

    def save(self, folder: str | Path) -> Path:
        return write_json_config(Path(folder) / CONFIG_NAME, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> FEvalConfig:
        """Read and validate a config file (size-limited, plain JSON, unknown keys refused)."""
        config = read_json_config(cls, path, name=CONFIG_NAME,
                                  missing=f": a feval checkpoint folder must contain {CONFIG_NAME}")
        path = Path(path).expanduser()
        path = path / CONFIG_NAME if path.is_dir() else path
        _check_relative_paths(config, path)
        if config.trust_remote_code:
            # A shared file must not switch on code execution: only the caller can (trust_remote_code=True).
            logger.warning("%s asks for trust_remote_code; ignored. Pass trust_remote_code=True "
                           "(feval score --trust-remote-code) if you trust the code of this checkpoint's backbone",
                           path)
            config.trust_remote_code = False
        return config


def write_json_config(path: str | Path, data: dict[str, Any]) -> Path:
    """Write a config as the plain JSON :func:`read_json_config` reads back (sorted keys, UTF-8): the one writer."""
    path = Path(path)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_json_config(cls: type[C], source: str | Path | Mapping[str, Any], *, what: str = "a feval config",
                     name: str | None = None, missing: str = "", unknown_hint: str | None = None,
                     ignore_unknown: bool = False, fix: str = "") -> C:
    """Build the config dataclass ``cls`` from a JSON file (read by :func:`read_json_object`) or a parsed dict: the
    one loader of every saved feval config.

    Unknown keys are refused, naming the valid ones (or ``unknown_hint``), unless ``ignore_unknown`` (keys an older
    or newer feval wrote are then dropped, with a debug log); missing required keys are named; JSON lists become
    tuples where the field is a tuple; a nested config dataclass (a field whose default factory is one) is built
    from its dict the same way. Every error is a :class:`ConfigError` that starts with the file (or ``what``);
    ``fix`` (what to do about a bad saved file) is appended to the errors of ``cls`` itself. A folder given as
    ``source`` means its file ``name``; a file that is not there is an error that says ``missing`` (where it comes
    from).
    """
    if not isinstance(cls, type) or not dataclasses.is_dataclass(cls):
        raise TypeError(f"read_json_config(cls, path_or_dict) builds a config dataclass, got {cls!r}; to parse a "
                        "JSON object alone use read_json_object(path, what)")
    if isinstance(source, Mapping):
        data, where = dict(source), what
    else:
        path = Path(source).expanduser()
        path = path / name if name is not None and path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"{path} not found{missing}")
        data, where = read_json_object(path, what), str(path)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown and ignore_unknown:
        logger.debug("%s: ignoring keys this feval does not know: %s", where, unknown)
        data = {k: v for k, v in data.items() if k in fields}
    elif unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; {unknown_hint or f'valid keys are {sorted(fields)}'}")
    absent = [k for k, f in fields.items() if k not in data and f.default is dataclasses.MISSING
              and f.default_factory is dataclasses.MISSING]
    if absent:
        raise ConfigError(f"{where}: missing required keys {absent}")
    for key, value in data.items():  # (not ``name``/``missing``: those are the arguments above)
        f = fields[key]
        nested = f.default_factory
        if isinstance(value, Mapping) and isinstance(nested, type) and dataclasses.is_dataclass(nested):
            data[key] = read_json_config(nested, value, what=f"{where}: {key}")
        elif isinstance(value, list) and str(f.type).startswith("tuple"):
            data[key] = tuple(value)
    try:
        return cls(**data)
    except ConfigError as exc:
        if str(exc).startswith(where):
            raise
        raise ConfigError(f"{where}: {exc}{fix}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}{fix}") from exc


def read_json_object(path: str | Path, what: str = "a feval config") -> dict[str, Any]:
    """Parse a small JSON object from an untrusted file: size, nesting and NaN/Infinity are refused."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is {size} bytes; {what} is a few KB (limit {MAX_CONFIG_BYTES}). "
                          "Refusing to parse it.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise ConfigError(f"{path} is not valid JSON ({exc}); re-save the checkpoint with save_pretrained") from exc
    except RecursionError as exc:
        raise ConfigError(f"{path} is nested too deeply to be {what}; refusing to parse it") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object, got {type(data).__name__}")
    if _depth(data) > MAX_JSON_DEPTH:
        raise ConfigError(f"{path} is nested deeper than {MAX_JSON_DEPTH} levels, unlike {what}. "
                          "Refusing to parse it.")
    return data


def _check_regex(name: str, value: Any) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_STRING:
        raise ConfigError(f"{name} must be a regex string, got {value!r}")
    try:
        re.compile(value)
    except re.error as exc:
        raise ConfigError(f"{name} is not a valid regex ({exc}): {value!r}") from exc


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a config")


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), computed without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
        else:
            continue
        deepest = max(deepest, d + 1)
    return deepest


def _check_relative_paths(config: FEvalConfig, path: Path) -> None:
    """Relative folders in a saved config are inside its checkpoint: refuse ones that climb out with '..'."""
    for key, value in (("base_model", config.base_model), ("face.root", config.face.root)):
        if value and not Path(value).is_absolute() and ".." in Path(value.replace("\\", "/")).parts:
            raise ConfigError(f"{path}: {key} {value!r} points outside the checkpoint folder; relative paths in a "
                              "checkpoint must stay inside it. Use an absolute path or a hub id instead.")
