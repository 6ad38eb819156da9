"""Every example graph in workflows/ loads in ComfyUI (known node types, typed links, valid widget values) and
passes ComfyUI's checks before a run (``tests/comfy_stub/validation.py``) whatever the models folders hold."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.comfy_stub import PACK_ROOT, install, load_pack, node_classes, widget_spec
from tests.comfy_stub.core_nodes import CORE_NODES, FILE_EXTENSIONS, FRONTEND_ONLY
from tests.comfy_stub.validation import WIDGET_TYPES, expected_widgets, ui_to_api, validate_prompt

WORKFLOWS = sorted((PACK_ROOT / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Core node specs plus ours, built from the pack's schemas in an empty ComfyUI folder."""
    install(tmp_path_factory.mktemp("ComfyUI-empty"))
    ours = {node_id: widget_spec(cls) for node_id, cls in node_classes(load_pack()).items()}
    assert not set(ours) & set(CORE_NODES)
    return {**CORE_NODES, **FRONTEND_ONLY, **ours}


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


# -- ComfyUI's checks before a run, on every disk -----------------------------------------------------------------

DISKS = {
    "empty": ([], [], []),
    "one checkpoint": (["tiny"], [], ["buffalo_l"]),
    "several": (["tiny", "mine/v2"], ["qwen-vl"], ["antelopev2", "buffalo_l"]),
    "other pack only": (["tiny"], [], ["antelopev2"]),
}


def make_disk(base: Path, checkpoints: list[str], vlms: list[str], packs: list[str]) -> None:
    """A ComfyUI folder whose model folders hold these (empty) checkpoints, base VLM folders and face packs."""
    for name in checkpoints:
        (base / "models" / "feval" / name).mkdir(parents=True)
        (base / "models" / "feval" / name / "feval_config.json").write_text("{}")
    for name in vlms:
        (base / "models" / "feval" / name).mkdir(parents=True)
        (base / "models" / "feval" / name / "config.json").write_text("{}")
    for name in packs:
        (base / "models" / "insightface" / "models" / name).mkdir(parents=True)
        (base / "models" / "insightface" / "models" / name / "det.onnx").write_bytes(b"")


@pytest.fixture(params=list(DISKS))
def disk(request: pytest.FixtureRequest, tmp_path: Path, specs: dict[str, dict]) -> dict:
    """One disk state: the pack's classes and specs as ComfyUI builds them there (lists come from the disk)."""
    make_disk(tmp_path, *DISKS[request.param])
    install(tmp_path)
    classes = node_classes(load_pack())
    return {"name": request.param, "classes": classes,
            "specs": {**specs, **{k: widget_spec(c) for k, c in classes.items()}}}


def user_files(graph_values: set[str]):
    """Core nodes' model and input files: the user's own (the checkpoint, upscaler, photo a graph names are there)."""
    return lambda folder: sorted(graph_values)


def validate(graph: dict, disk: dict) -> dict[str, list[dict]]:
    prompt = ui_to_api(graph, disk["specs"], set(FRONTEND_ONLY))
    named = {v for n in prompt.values() for v in n["inputs"].values() if isinstance(v, str)}
    return validate_prompt(prompt, disk["classes"], disk["specs"], user_files(named))


OWN_MODEL_NODES = {"FEvalFaceUtility", "FEvalFaceQuickCheck", "FEvalScoreFaceVideo"}
"""Nodes with no hub or zero-shot fallback: the user picks a model of their own, so a graph saved with "(none)" is
refused before a run with the fix (custom_validation_failed), never with ComfyUI's bare value_not_in_list."""


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_passes_comfyui_validation_on_every_disk(path: Path, disk: dict) -> None:
    graph = json.loads(path.read_text())
    errors = validate(graph, disk)
    own = {str(n["id"]) for n in graph["nodes"] if n["type"] in OWN_MODEL_NODES}
    for node_id in own & set(errors):
        assert [e["type"] for e in errors.pop(node_id)] == ["custom_validation_failed"]
    assert not errors, f"{path.name} on disk '{disk['name']}': {errors}"


def test_a_face_utility_graph_is_valid_once_its_model_is_there(tmp_path: Path, specs: dict[str, dict]) -> None:
    """The reference-photo graph names no models ("(none)"): refused with where to put them; with a ViT-FIQA and a
    pre-filter folder in models/feval and chosen, the whole graph passes; a name that leaves the models folder is
    refused."""
    path = PACK_ROOT / "workflows" / "feval_reference_photo_check.json"
    graph = json.loads(path.read_text())
    utility = next(n for n in graph["nodes"] if n["type"] == "FEvalFaceUtility")
    quick = next(n for n in graph["nodes"] if n["type"] == "FEvalFaceQuickCheck")
    make_disk(tmp_path, [], [], ["buffalo_l"])
    for folder, config in (("vit-fiqa", "fiqa_config.json"), ("quick", "prefilter_config.json")):
        (tmp_path / "models" / "feval" / folder).mkdir(parents=True)
        (tmp_path / "models" / "feval" / folder / config).write_text("{}")
    install(tmp_path)
    classes = node_classes(load_pack())
    disk = {"classes": classes, "specs": {**specs, **{k: widget_spec(c) for k, c in classes.items()}}}
    errors = validate(graph, disk)
    assert sorted(errors) == sorted([str(utility["id"]), str(quick["id"])])
    assert "no ViT-FIQA model selected" in errors[str(utility["id"])][0]["details"]
    assert "no landmark pre-filter selected" in errors[str(quick["id"])][0]["details"]
    utility["widgets_values"][0], quick["widgets_values"][0] = "vit-fiqa", "quick"
    assert not validate(graph, disk)
    quick["widgets_values"][0] = "vit-fiqa"  # a folder without the pre-filter's files
    assert list(validate(graph, disk)) == [str(quick["id"])]
    quick["widgets_values"][0] = "quick"
    utility["widgets_values"][0] = "../feval/vit-fiqa"
    assert "not a path" in validate(graph, disk)[str(utility["id"])][0]["details"]


def test_the_validator_refuses_what_comfyui_refuses(disk: dict) -> None:
    """The checks can fail: without its validate_inputs, ComfyUI's list check refuses the loader of a hub graph
    saved elsewhere (issue 17's value_not_in_list); with it, the same graph (even as saved by earlier versions of
    the pack) is valid; bad values of every kind are still caught."""
    from comfy_api.latest import io

    graph = json.loads(WORKFLOWS[0].read_text())
    loader = next(n for n in graph["nodes"] if n["type"] == "FEvalModelLoader")
    old = dict(disk["classes"])
    old["FEvalModelLoader"] = type("OldLoader", (old["FEvalModelLoader"],),
                                   {"validate_inputs": io.ComfyNode.validate_inputs})
    loader["widgets_values"][1] = "(no checkpoints in models/feval)"
    prompt = ui_to_api(graph, disk["specs"], set(FRONTEND_ONLY))
    named = {v for n in prompt.values() for v in n["inputs"].values() if isinstance(v, str)}
    errors = validate_prompt(prompt, old, disk["specs"], user_files(named))
    refused = [e for es in errors.values() for e in es if e["type"] == "value_not_in_list"
               and e["details"].startswith("checkpoint:")]
    assert refused and list(errors) == [str(loader["id"])]
    assert not validate(graph, disk)  # today's loader: the same graph is valid
    loader["widgets_values"][5] = "int8"  # dtype: a plain combo, still checked by ComfyUI
    loader["widgets_values"][0] = "models folder"  # now the checkpoint is used, and it does not exist
    errors = validate(graph, disk)[str(loader["id"])]
    assert {e["type"] for e in errors} == {"value_not_in_list", "custom_validation_failed"}
    assert "put a checkpoint folder" in " ".join(e["details"] for e in errors)


SOURCES = {"models folder": "", "hub id": "org/feval-model", "zero-shot (base VLM)": "Qwen/Qwen2.5-VL-7B-Instruct"}


@pytest.mark.parametrize("source", list(SOURCES))
def test_a_graph_saved_from_the_loader_stays_valid(source: str, disk: dict, tmp_path_factory) -> None:
    """A loader saved with its defaults on one disk and run on another: hub graphs are valid everywhere; a graph that
    uses a local checkpoint is valid where that checkpoint exists and refused with the fix elsewhere."""
    spec = disk["specs"]["FEvalModelLoader"]
    values = [inp.get("default", (inp.get("options") or [""])[0]) for _, inp in expected_widgets(spec)]
    values[0], values[2] = source, SOURCES[source]
    saved_ckpt = values[1]
    for other in DISKS:
        base = tmp_path_factory.mktemp("other")
        make_disk(base, *DISKS[other])
        install(base)
        classes = node_classes(load_pack())
        here = {"classes": classes, "specs": {**disk["specs"], **{k: widget_spec(c) for k, c in classes.items()}}}
        prompt = {"1": {"class_type": "FEvalModelLoader", "inputs": dict(zip(
            [n for n, _ in expected_widgets(spec)], values))}}
        errors = validate_prompt(prompt, here["classes"], here["specs"])
        usable = SOURCES[source] or saved_ckpt in DISKS[other][0] + DISKS[other][1]
        assert not errors if usable else errors, (source, disk["name"], other, errors)


def test_the_face_video_graph_is_valid_once_its_checkpoint_is_there(tmp_path: Path, specs: dict[str, dict]) -> None:
    graph = json.loads((PACK_ROOT / "workflows" / "feval_face_video_check.json").read_text())
    video = next(n for n in graph["nodes"] if n["type"] == "FEvalScoreFaceVideo")
    make_disk(tmp_path, ["tiny"], [], ["buffalo_l"])
    (tmp_path / "models" / "feval" / "fvq").mkdir(parents=True)
    (tmp_path / "models" / "feval" / "fvq" / "video_config.json").write_text("{}")
    install(tmp_path)
    classes = node_classes(load_pack())
    disk = {"classes": classes, "specs": {**specs, **{k: widget_spec(c) for k, c in classes.items()}}}
    assert "no video checkpoint selected" in validate(graph, disk)[str(video["id"])][0]["details"]
    video["widgets_values"][0] = "tiny"  # an image checkpoint is not a video checkpoint
    assert list(validate(graph, disk)) == [str(video["id"])]
    video["widgets_values"][0] = "fvq"
    assert not validate(graph, disk)
