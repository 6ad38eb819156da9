"""Every example graph in workflows/ loads in ComfyUI: known node types, typed links, valid widget values."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.comfy_stub import PACK_ROOT, install, load_pack, node_classes, widget_spec
from tests.comfy_stub.core_nodes import (
    CONTROL_AFTER_GENERATE,
    CORE_NODES,
    FILE_EXTENSIONS,
    FRONTEND_ONLY,
)

WORKFLOWS = sorted((PACK_ROOT / "workflows").glob("*.json"))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Core node specs plus ours, built from the pack's schemas in an empty ComfyUI folder."""
    install(tmp_path_factory.mktemp("ComfyUI-empty"))
    ours = {node_id: widget_spec(cls) for node_id, cls in node_classes(load_pack()).items()}
    assert not set(ours) & set(CORE_NODES)
    return {**CORE_NODES, **FRONTEND_ONLY, **ours}


def expected_widgets(spec: dict) -> list[tuple[str, dict]]:
    """(name, spec) per entry of ``widgets_values``: required widgets, then optional ones, plus the extra
    values the frontend stores after seeds (control_after_generate) and upload combos."""
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


def check_value(value, spec: dict) -> str | None:
    """Why ``value`` is not valid for a widget input with ``spec``, or None."""
    kind = spec["type"]
    if kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{value!r} is not a boolean"
    if kind in ("INT", "FLOAT"):
        ok_type = isinstance(value, int) if kind == "INT" else isinstance(value, (int, float))
        if not ok_type or isinstance(value, bool):
            return f"{value!r} is not {kind}"
        if not spec.get("min", value) <= value <= spec.get("max", value):
            return f"{value!r} outside [{spec.get('min')}, {spec.get('max')}]"
        return None
    if kind == "STRING":
        return None if isinstance(value, str) else f"{value!r} is not a string"
    if "files" in spec:  # a model/input file list: depends on the user's disk, check the name's form
        ok = isinstance(value, str) and value.lower().endswith(FILE_EXTENSIONS[spec["files"]])
        return None if ok and not os.path.isabs(value) and ".." not in value else f"{value!r} is not a file name"
    return None if value in spec["options"] else f"{value!r} not in {spec['options']}"


def test_there_is_a_workflow_for_each_use_case() -> None:
    names = {p.stem for p in WORKFLOWS}
    assert {"feval_generate_and_filter", "feval_customization_identity_check", "feval_restoration_check",
            "feval_best_of_n"} <= names


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_is_valid(path: Path, specs: dict[str, dict]) -> None:
    graph = json.loads(path.read_text())
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert len(nodes) == len(graph["nodes"]) and graph["last_node_id"] >= max(nodes)
    links = {link[0]: link for link in graph["links"]}
    assert len(links) == len(graph["links"]) and graph["last_link_id"] >= max(links)
    problems: list[str] = []
    for node in graph["nodes"]:
        where = f"node {node['id']} ({node['type']})"
        spec = specs.get(node["type"])
        if spec is None:
            problems.append(f"{where}: unknown node type (not core ComfyUI, not feval)")
            continue
        by_name = {i["name"]: i for i in spec["inputs"]}
        for slot in node.get("inputs", []):
            inp = by_name.get(slot["name"])
            if inp is None:
                problems.append(f"{where}: no input {slot['name']!r}")
            elif slot["type"] != inp["type"]:
                problems.append(f"{where}: input {slot['name']!r} is {inp['type']}, not {slot['type']}")
            elif inp["type"] in WIDGET_TYPES and slot.get("link") is not None and "widget" not in slot:
                problems.append(f"{where}: linked widget input {slot['name']!r} lacks its 'widget' entry")
        linked = {s["name"] for s in node.get("inputs", []) if s.get("link") is not None}
        for inp in spec["inputs"]:
            if not inp["optional"] and inp["type"] not in WIDGET_TYPES and inp["name"] not in linked:
                problems.append(f"{where}: required input {inp['name']!r} is not connected")
        outs = node.get("outputs", [])
        if [(o["name"], o["type"]) for o in outs] != [(o["name"], o["type"]) for o in spec["outputs"]]:
            problems.append(f"{where}: outputs {[o['type'] for o in outs]} != {[o['type'] for o in spec['outputs']]}")
        wanted = expected_widgets(spec)
        values = node.get("widgets_values", [])
        if len(values) != len(wanted):
            problems.append(f"{where}: {len(values)} widget values for {[n for n, _ in wanted]}")
        else:
            for (name, wspec), value in zip(wanted, values):
                why = check_value(value, wspec)
                if why:
                    problems.append(f"{where}: widget {name}: {why}")
    for lid, origin, oslot, target, tslot, ltype in graph["links"]:
        src, dst = nodes.get(origin), nodes.get(target)
        if src is None or dst is None:
            problems.append(f"link {lid}: missing node {origin if src is None else target}")
            continue
        if oslot >= len(src["outputs"]) or tslot >= len(dst["inputs"]):
            problems.append(f"link {lid}: slot out of range")
            continue
        out, inp = src["outputs"][oslot], dst["inputs"][tslot]
        if lid not in (out.get("links") or []) or inp.get("link") != lid:
            problems.append(f"link {lid}: not recorded on both ends")
        if out["type"] != ltype or inp["type"] not in (ltype, "*"):
            problems.append(f"link {lid}: {src['type']}.{out['name']} ({out['type']}) -> "
                            f"{dst['type']}.{inp['name']} ({inp['type']}) carries {ltype}")
    for node in graph["nodes"]:
        for slot in node.get("inputs", []):
            if slot.get("link") is not None and slot["link"] not in links:
                problems.append(f"node {node['id']}: input {slot['name']!r} names unknown link {slot['link']}")
    assert not problems, "\n".join(problems)
    assert any(n["type"].startswith("FEval") for n in graph["nodes"])


def test_workflows_use_every_node_of_the_pack(specs: dict[str, dict]) -> None:
    used = {n["type"] for p in WORKFLOWS for n in json.loads(p.read_text())["nodes"]}
    ours = {k for k in specs if k.startswith("FEval")}
    assert ours <= used, f"not shown in any workflow: {sorted(ours - used)}"
