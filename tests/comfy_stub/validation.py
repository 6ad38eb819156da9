"""ComfyUI's checks of a graph before it runs, for the workflow tests: UI graph -> API prompt -> per-node checks.

Written from ComfyUI's ``execution.validate_inputs`` (the version that validates V3 combo values, after
v0.3.64): for every input a node declares, a missing required input is ``required_input_missing``; a widget
value is converted to its type (INT, FLOAT, STRING, BOOLEAN); then, **unless the node's ``validate_inputs``
names that input**, a number outside ``min``/``max`` is ``value_smaller_than_min``/``value_bigger_than_max`` and
a COMBO value not in the input's ``options`` is ``value_not_in_list``. Finally a node that overrides
``validate_inputs`` is called with the inputs it names (linked ones as None, since they are not computed yet)
and anything but True is ``custom_validation_failed``. Link types are checked by ``tests/test_workflows.py``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .core_nodes import CONTROL_AFTER_GENERATE

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
_CONVERT: dict[str, Callable[[Any], Any]] = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


def expected_widgets(spec: dict) -> list[tuple[str, dict]]:
    """(name, spec) per entry of a UI node's ``widgets_values``: required widgets, then optional ones, plus the
    extra values the frontend stores after seeds (control_after_generate) and upload combos (named ``name:...``)."""
    ordered = [i for i in spec["inputs"] if not i["optional"]] + [i for i in spec["inputs"] if i["optional"]]
    out: list[tuple[str, dict]] = []
    for inp in ordered:
        if inp["type"] not in WIDGET_TYPES or inp.get("forceInput"):
            continue
        out.append((inp["name"], inp))
        if inp.get("control_after_generate"):
            out.append((inp["name"] + ":control_after_generate", {"type": "COMBO", "options": CONTROL_AFTER_GENERATE}))
        if inp.get("image_upload"):
            out.append((inp["name"] + ":upload", {"type": "COMBO", "options": ["image"]}))
    return out


def ui_to_api(graph: dict, specs: dict[str, dict], frontend_only: set[str]) -> dict[str, dict]:
    """The API prompt the frontend sends for a UI graph: ``{id: {"class_type", "inputs"}}``, widget values by name,
    links as ``[origin id, origin slot]`` (a linked widget takes its link); frontend-only and muted nodes dropped."""
    links = {link[0]: link for link in graph["links"]}
    prompt: dict[str, dict] = {}
    for node in graph["nodes"]:
        if node["type"] in frontend_only or node.get("mode", 0) in (2, 4):
            continue
        inputs: dict[str, Any] = {}
        values = node.get("widgets_values") or []
        for (name, _), value in zip(expected_widgets(specs[node["type"]]), values):
            if ":" not in name:
                inputs[name] = value
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, origin, origin_slot, *_ = links[slot["link"]]
                inputs[slot["name"]] = [str(origin), origin_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def _validator(node: Any) -> tuple[Callable[..., Any] | None, list[str], bool]:
    """A V3 class's own ``validate_inputs`` (only when it overrides the base), its argument names, and **kwargs."""
    if isinstance(node, dict):
        return None, [], False
    from comfy_api.latest import io

    own = node.validate_inputs
    if getattr(own, "__func__", None) is io.ComfyNode.validate_inputs.__func__:
        return None, [], False
    spec = inspect.getfullargspec(own)
    return own, spec.args, spec.varkw is not None


def validate_node(node: Any, spec: dict, inputs: dict[str, Any],
                  file_options: Callable[[str], list[str]] | None = None) -> list[dict]:
    """ComfyUI's errors for one node of an API prompt (empty when valid). ``node`` is a V3 class or a core node's
    spec dict; ``file_options(folder)`` lists a core COMBO's files on the user's disk."""
    errors: list[dict] = []
    check, named, has_kwargs = _validator(node)
    for inp in spec["inputs"]:
        x = inp["name"]
        if x not in inputs:
            if not inp["optional"]:
                errors.append({"type": "required_input_missing", "details": x})
            continue
        val = inputs[x]
        if isinstance(val, list):
            continue  # a link: its type is checked elsewhere
        kind = inp["type"]
        try:
            val = _CONVERT[kind](val) if kind in _CONVERT else val
        except (TypeError, ValueError) as exc:
            errors.append({"type": "invalid_input_type", "details": f"{x}, {val}, {exc}"})
            continue
        if x in named or has_kwargs:
            continue
        if "min" in inp and val < inp["min"]:
            errors.append({"type": "value_smaller_than_min", "details": x})
        elif "max" in inp and val > inp["max"]:
            errors.append({"type": "value_bigger_than_max", "details": x})
        elif kind == "COMBO":
            options = file_options(inp["files"]) if "files" in inp and file_options else inp.get("options", [])
            if val not in options:
                errors.append({"type": "value_not_in_list", "details": f"{x}: '{val}' not in {options}"})
    if check is not None:
        given = {x: (None if isinstance(v, list) else v) for x, v in inputs.items() if x in named or has_kwargs}
        result = check(**given)
        if result is not True:
            errors.append({"type": "custom_validation_failed", "details": f"{', '.join(given)} - {result}"})
    return errors


def validate_prompt(prompt: dict[str, dict], classes: dict[str, Any], specs: dict[str, dict],
                    file_options: Callable[[str], list[str]] | None = None) -> dict[str, list[dict]]:
    """``{node id: errors}`` for the nodes of ``prompt`` that ComfyUI would refuse (empty when the graph may run)."""
    out = {}
    for node_id, node in prompt.items():
        kind = node["class_type"]
        errors = validate_node(classes.get(kind, specs[kind]), specs[kind], node["inputs"], file_options)
        if errors:
            out[node_id] = errors
    return out
