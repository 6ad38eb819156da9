"""Stub of ComfyUI's ``comfy_api.latest._io`` (V3 node API), reduced to what node packs touch.

Signatures follow ComfyUI v0.3.6x: ``Schema`` fields, ``Input``/``WidgetInput``/``Output`` keyword
arguments, ``Float.Input(min, max, step, round)``, ``Combo.Input(options)``, ``Custom(io_type)``,
``NodeOutput(*args, ui=, expand=, block_execution=)``. ``ComfyNode.GET_SCHEMA`` finalizes and validates
a schema the way ComfyUI does when it registers a node; ``ComfyNode.validate_inputs`` is the base that a node
overrides to check its own inputs (see ``tests/comfy_stub/validation.py``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import Enum
from typing import Any


def _prune(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


class NumberDisplay(str, Enum):
    number = "number"
    slider = "slider"


class FolderType(str, Enum):
    input = "input"
    output = "output"
    temp = "temp"


class UploadType(str, Enum):
    image = "image_upload"
    audio = "audio_upload"
    video = "video_upload"
    model = "file_upload"


class Input:
    io_type: str = ""

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                 lazy: bool | None = None, extra_dict: dict | None = None) -> None:
        if not isinstance(id, str) or not id:
            raise TypeError("an input needs a non-empty string id")
        self.id = id
        self.display_name = display_name
        self.optional = optional
        self.tooltip = tooltip
        self.lazy = lazy
        self.extra_dict = extra_dict or {}

    def as_dict(self) -> dict[str, Any]:
        return _prune({"display_name": self.display_name, "optional": self.optional, "tooltip": self.tooltip,
                       "lazy": self.lazy}) | _prune(self.extra_dict)

    def get_io_type(self) -> str:
        return self.io_type


class WidgetInput(Input):
    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                 lazy: bool | None = None, default: Any = None, socketless: bool | None = None,
                 widget_type: str | None = None, force_input: bool | None = None,
                 extra_dict: dict | None = None) -> None:
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
        self.default = default
        self.socketless = socketless
        self.widget_type = widget_type
        self.force_input = force_input

    def as_dict(self) -> dict[str, Any]:
        return super().as_dict() | _prune({"default": self.default, "socketless": self.socketless,
                                           "widgetType": self.widget_type, "forceInput": self.force_input})


class Output:
    io_type: str = ""

    def __init__(self, id: str | None = None, display_name: str | None = None, tooltip: str | None = None,
                 is_output_list: bool = False) -> None:
        self.id = id
        self.display_name = display_name
        self.tooltip = tooltip
        self.is_output_list = is_output_list

    def as_dict(self) -> dict[str, Any]:
        return _prune({"display_name": self.display_name, "tooltip": self.tooltip,
                       "is_output_list": self.is_output_list})

    def get_io_type(self) -> str:
        return self.io_type


class ComfyTypeIO:
    io_type: str = ""
    Input = Input
    Output = Output


def comfytype(io_type: str):
    """Bind ``io_type`` to a type class and to its nested Input/Output classes."""

    def decorator(cls: type) -> type:
        cls.io_type = io_type
        base_in = cls.__dict__.get("Input", Input)
        base_out = cls.__dict__.get("Output", Output)
        cls.Input = type(base_in.__name__, (base_in,), {"io_type": io_type, "Parent": cls})
        cls.Output = type(base_out.__name__, (base_out,), {"io_type": io_type, "Parent": cls})
        return cls

    return decorator


def Custom(io_type: str) -> type[ComfyTypeIO]:  # noqa: N802 - ComfyUI's name
    @comfytype(io_type)
    class CustomComfyType(ComfyTypeIO):
        pass

    return CustomComfyType


@comfytype("BOOLEAN")
class Boolean(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, default: bool | None = None,
                     label_on: str | None = None, label_off: str | None = None, socketless: bool | None = None,
                     force_input: bool | None = None) -> None:
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.label_on = label_on
            self.label_off = label_off

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | _prune({"label_on": self.label_on, "label_off": self.label_off})


@comfytype("INT")
class Int(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, default: int | None = None,
                     min: int | None = None, max: int | None = None, step: int | None = None,
                     control_after_generate: bool | None = None, display_mode: NumberDisplay | None = None,
                     socketless: bool | None = None, force_input: bool | None = None) -> None:
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.min, self.max, self.step = min, max, step
            self.control_after_generate = control_after_generate
            self.display_mode = display_mode

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | _prune({
                "min": self.min, "max": self.max, "step": self.step,
                "control_after_generate": self.control_after_generate,
                "display": self.display_mode.value if self.display_mode else None})


@comfytype("FLOAT")
class Float(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, default: float | None = None,
                     min: float | None = None, max: float | None = None, step: float | None = None,
                     round: float | None = None, display_mode: NumberDisplay | None = None,
                     socketless: bool | None = None, force_input: bool | None = None) -> None:
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.min, self.max, self.step, self.round = min, max, step, round
            self.display_mode = display_mode

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | _prune({"min": self.min, "max": self.max, "step": self.step,
                                               "round": self.round, "display": self.display_mode})


@comfytype("STRING")
class String(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, multiline: bool = False,
                     placeholder: str | None = None, default: str | None = None,
                     dynamic_prompts: bool | None = None, socketless: bool | None = None,
                     force_input: bool | None = None) -> None:
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.multiline = multiline
            self.placeholder = placeholder
            self.dynamic_prompts = dynamic_prompts

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | _prune({"multiline": self.multiline, "placeholder": self.placeholder,
                                               "dynamicPrompts": self.dynamic_prompts})


@comfytype("COMBO")
class Combo(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, options: list[str] | list[int] | type[Enum] | None = None,
                     display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                     lazy: bool | None = None, default: Any = None, control_after_generate: bool | None = None,
                     upload: UploadType | None = None, image_folder: FolderType | None = None,
                     remote: Any = None, socketless: bool | None = None) -> None:
            if isinstance(options, type) and issubclass(options, Enum):
                options = [v.value for v in options]
            if isinstance(default, Enum):
                default = default.value
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless)
            self.multiselect = False
            self.options = options
            self.control_after_generate = control_after_generate
            self.upload = upload
            self.image_folder = image_folder
            self.remote = remote

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | _prune({
                "multiselect": self.multiselect, "options": self.options,
                "control_after_generate": self.control_after_generate,
                **({self.upload.value: True} if self.upload is not None else {}),
                "image_folder": self.image_folder.value if self.image_folder else None})


@comfytype("IMAGE")
class Image(ComfyTypeIO):
    pass


@comfytype("MASK")
class Mask(ComfyTypeIO):
    pass


@comfytype("VIDEO")
class Video(ComfyTypeIO):
    """ComfyUI's VIDEO: a ``VideoInput`` with ``get_components()`` (images ``[T,H,W,C]``, audio, frame_rate)."""


@comfytype("LATENT")
class Latent(ComfyTypeIO):
    pass


@comfytype("*")
class AnyType(ComfyTypeIO):
    pass


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"


class HiddenHolder:
    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)

    def __getattr__(self, key: str) -> Any:
        return None


@dataclass
class Schema:
    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list[Input] | None = None
    outputs: list[Output] | None = None
    hidden: list[Hidden] | None = None
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def validate(self) -> None:
        ins = [i.id for i in self.inputs or []]
        outs = [o.id for o in self.outputs or []]
        issues = []
        if len(set(ins)) != len(ins):
            issues.append(f"Input ids must be unique, but {[k for k, c in Counter(ins).items() if c > 1]} are not.")
        if len(set(outs)) != len(outs):
            issues.append(f"Output ids must be unique, but {[k for k, c in Counter(outs).items() if c > 1]} are not.")
        if set(ins) & set(outs):
            issues.append(f"Ids must be unique between inputs and outputs, but {set(ins) & set(outs)} are not.")
        if issues:
            raise ValueError("\n".join(issues))

    def finalize(self) -> None:
        if self.is_output_node:
            self.hidden = list(self.hidden or [])
            for h in (Hidden.prompt, Hidden.extra_pnginfo):
                if h not in self.hidden:
                    self.hidden.append(h)
        for i, output in enumerate(self.outputs or []):
            if output.id is None:
                output.id = f"_{i}_{output.io_type}_"


class ComfyNode:
    """Base class of V3 nodes. Classes keep no instance state; ComfyUI calls classmethods."""

    hidden: HiddenHolder = HiddenHolder()
    SCHEMA: Schema | None = None

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs: Any) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def validate_inputs(cls, **kwargs: Any) -> bool | str:
        """Optional check before a run (V1's VALIDATE_INPUTS): True, or a message. ComfyUI calls it only when a
        class overrides it, and then skips its own min/max and list checks for the inputs it names."""
        raise NotImplementedError

    @classmethod
    def GET_SCHEMA(cls) -> Schema:  # noqa: N802 - ComfyUI's name
        schema = cls.define_schema()
        schema.finalize()
        schema.validate()
        cls.SCHEMA = schema
        return schema


class NodeOutput:
    def __init__(self, *args: Any, ui: Any = None, expand: dict | None = None,
                 block_execution: str | None = None) -> None:
        self.args = args
        self.ui = ui
        self.expand = expand
        self.block_execution = block_execution

    @property
    def result(self) -> tuple | None:
        return self.args if len(self.args) > 0 else None

    def __getitem__(self, index: int) -> Any:
        return self.args[index]


class _UIOutput:
    def as_dict(self) -> dict:
        raise NotImplementedError
