"""The ComfyUI nodes, run without ComfyUI: stubbed ``comfy*`` modules, a tiny checkpoint, IMAGE tensors."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from feval_core import DIMENSIONS
from tests.comfy_stub import PACK_ROOT, install, load_pack, node_classes, widget_spec

NODE_IDS = {"FEvalModelLoader", "FEvalScoreFaces", "FEvalFilterByScore", "FEvalPickBest", "FEvalFaceSimilarity",
            "FEvalFaceUtility", "FEvalFaceQuickCheck", "FEvalScoreFaceVideo"}


def as_batch(*arrays: np.ndarray) -> torch.Tensor:
    """A ComfyUI IMAGE batch [B, H, W, 3] float32 in [0, 1] from uint8 HWC arrays."""
    return torch.from_numpy(np.stack(arrays)).float() / 255.0


@pytest.fixture(scope="module")
def comfy(tmp_path_factory: pytest.TempPathFactory, tiny_ckpt: Path) -> SimpleNamespace:
    """A ComfyUI folder with the tiny checkpoint, a base VLM folder and two face packs; the pack loaded."""
    from feval_core.testing.facepack import write_tiny_face_pack

    base = tmp_path_factory.mktemp("ComfyUI")
    folder_paths = install(base)
    models = base / "models"
    shutil.copytree(tiny_ckpt, models / "feval" / "tiny")
    shutil.copytree(tiny_ckpt / "backbone", models / "feval" / "vlm")
    write_tiny_face_pack(models / "insightface", name="tiny_face", seed=0)
    write_tiny_face_pack(models / "insightface", name="other_pack", seed=1)
    pack = load_pack()
    nodes = node_classes(pack)
    import comfy.model_management as mm
    import comfy.utils

    return SimpleNamespace(base=base, models=models, folder_paths=folder_paths, pack=pack, nodes=nodes, mm=mm,
                           utils=comfy.utils, outside=tiny_ckpt)


@pytest.fixture(scope="module")
def handle(comfy: SimpleNamespace):
    return comfy.nodes["FEvalModelLoader"].execute("models folder", "tiny", "", "auto", "cpu", "auto")[0]


@pytest.fixture(scope="module")
def zero_shot(comfy: SimpleNamespace):
    return comfy.nodes["FEvalModelLoader"].execute("zero-shot (base VLM)", "vlm", "", "tiny_face", "cpu", "auto")[0]


@pytest.fixture(scope="module")
def images(faces: dict[str, np.ndarray]) -> torch.Tensor:
    return as_batch(faces["a"], faces["b"], faces["none"], faces["a_moved"])


def make_scores(comfy: SimpleNamespace, rows: list[list[float]], notes: list[list[str]] | None = None):
    values = torch.tensor(rows, dtype=torch.float32)
    n = len(rows)
    return comfy.pack.nodes.scores.FEvalScores(values, DIMENSIONS, [1] * n, notes or [[] for _ in range(n)])


# -- registration ----------------------------------------------------------------------------------


def test_pack_imports_without_comfyui_torch_or_models() -> None:
    code = (
        "import importlib.util, inspect, sys\n"
        f"root = {str(PACK_ROOT)!r}\n"
        "spec = importlib.util.spec_from_file_location('feval_pack', root + '/__init__.py',"
        " submodule_search_locations=[root])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['feval_pack'] = m; spec.loader.exec_module(m)\n"
        "assert inspect.iscoroutinefunction(m.comfy_entrypoint)\n"
        "print(sorted(k for k in ('torch', 'comfy', 'folder_paths', 'feval_core') if k in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=PACK_ROOT.parent,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"  # nothing heavy and nothing of ComfyUI is imported


def test_entrypoint_lists_every_node_and_registers_model_folders(comfy: SimpleNamespace) -> None:
    assert set(comfy.nodes) == NODE_IDS
    for cls in comfy.nodes.values():
        schema = cls.GET_SCHEMA()
        assert schema.category == "F-Eval" and schema.display_name and schema.description
    assert comfy.folder_paths.get_folder_paths("feval") == [str(comfy.models / "feval")]
    assert comfy.folder_paths.get_folder_paths("insightface") == [str(comfy.models / "insightface")]
    assert "NODE_CLASS_MAPPINGS" not in vars(comfy.pack)  # ComfyUI loads a module as V1 or V3, not both


def test_widget_defaults_are_valid_and_scores_state_their_range(comfy: SimpleNamespace) -> None:
    for node_id, cls in comfy.nodes.items():
        for inp in widget_spec(cls)["inputs"]:
            if "options" in inp:
                assert inp.get("default", inp["options"][0]) in inp["options"], (node_id, inp)
            if "min" in inp:
                assert inp["min"] <= inp["default"] <= inp["max"], (node_id, inp)
    score = comfy.nodes["FEvalScoreFaces"].GET_SCHEMA()
    lists = [o for o in score.outputs if o.io_type == "FLOAT"]
    assert [o.display_name for o in lists] == [*DIMENSIONS, "answer"] and all(o.is_output_list for o in lists)
    assert all("0-100" in o.tooltip for o in lists)
    assert score.is_output_node


# -- loader and model files ------------------------------------------------------------------------


def test_checkpoint_choices(comfy: SimpleNamespace) -> None:
    cache = comfy.models / "feval" / "hub-cache" / "models--org--x" / "snapshots" / "abc"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "feval_config.json").write_text("{}")
    checkpoint = comfy.nodes["FEvalModelLoader"].GET_SCHEMA().inputs[1]
    assert checkpoint.options == ["tiny", "vlm", "(none)"]  # not the backbone inside 'tiny', not the hub cache
    assert checkpoint.default == "tiny"
    face = comfy.nodes["FEvalModelLoader"].GET_SCHEMA().inputs[3].options
    assert face == ["auto", "other_pack", "tiny_face"]


def test_loader_builds_a_trained_scorer_with_its_own_face_pack(handle) -> None:
    assert handle.scorer.model.trained and handle.name == "tiny"
    assert handle.scorer.face_encoder is not None
    assert handle.patcher.model is handle.scorer.model


def test_zero_shot_on_a_local_base_vlm_uses_the_insightface_folder(comfy: SimpleNamespace, zero_shot) -> None:
    assert not zero_shot.scorer.model.trained
    assert Path(zero_shot.scorer.face_encoder.pack_dir) == comfy.models / "insightface" / "models" / "tiny_face"


@pytest.mark.parametrize("name", ["../tiny", "../../etc", "/etc/passwd", "C:\\Windows\\x", "tiny/../../x", "..\\x"])
def test_model_names_cannot_escape_the_models_folder(comfy: SimpleNamespace, name: str) -> None:
    with pytest.raises(ValueError, match="inside"):
        comfy.nodes["FEvalModelLoader"].execute("models folder", name, "", "auto", "cpu", "auto")


def test_symlinks_out_of_the_models_folder_are_refused(comfy: SimpleNamespace) -> None:
    paths = comfy.pack.nodes.paths
    link = comfy.models / "feval" / "escape"
    link.symlink_to(comfy.outside, target_is_directory=True)
    leaky = comfy.models / "feval" / "leaky"
    leaky.mkdir()
    (leaky / "feval_config.json").symlink_to(comfy.outside / "feval_config.json")
    try:
        assert {"escape", "leaky"} <= set(paths.list_checkpoints())  # ComfyUI lists them ...
        for name in ("escape", "leaky"):  # ... but they do not load
            with pytest.raises(PermissionError, match="outside the feval model folders"):
                comfy.nodes["FEvalModelLoader"].execute("models folder", name, "", "auto", "cpu", "auto")
    finally:
        link.unlink()
        shutil.rmtree(leaky)


def test_missing_checkpoint_says_where_to_put_one(comfy: SimpleNamespace) -> None:
    loader = comfy.nodes["FEvalModelLoader"]
    for name in ("nope", "(no checkpoints in models/feval)"):
        with pytest.raises(FileNotFoundError, match=str(comfy.models / "feval")):
            loader.execute("models folder", name, "", "auto", "cpu", "auto")


def test_loader_checks_the_checkpoint_only_where_it_is_used(comfy: SimpleNamespace) -> None:
    """ComfyUI's check before a run (validate_inputs): hub graphs pass whatever the checkpoint widget holds."""
    check = comfy.nodes["FEvalModelLoader"].validate_inputs
    for stale in ("(none)", "(no checkpoints in models/feval)", "someone-elses-checkpoint"):
        assert check("hub id", stale, "org/feval-model", "auto") is True
        assert check("zero-shot (base VLM)", stale, "Qwen/Qwen2.5-VL-7B-Instruct", "auto") is True
        assert str(comfy.models / "feval") in check("models folder", stale, "", "auto")  # where to put one
    assert check("models folder", "tiny", "", "auto") is True and check("zero-shot (base VLM)", "vlm", "", "auto")
    assert "is a feval checkpoint, not a base VLM" in check("zero-shot (base VLM)", "tiny", "", "auto")
    assert "Hugging Face id" in check("hub id", "tiny", "../x", "auto")
    assert "source must be one of" in check("somewhere", "tiny", "", "auto")
    assert check("hub id", "tiny", None, "auto") is True  # a linked hub id: known only at run time
    assert check("models folder", None, "", "auto") is True


def test_a_second_models_root_from_extra_model_paths(comfy: SimpleNamespace, tmp_path: Path) -> None:
    other = tmp_path / "disk2"
    (other / "mine").mkdir(parents=True)
    (other / "mine" / "feval_config.json").write_text("{}")
    comfy.folder_paths.add_model_folder_path("feval", str(other))
    try:
        paths = comfy.pack.nodes.paths
        assert "mine" in paths.list_checkpoints()
        assert paths.resolve_checkpoint("mine") == (other / "mine").resolve()
    finally:
        comfy.folder_paths.folder_names_and_paths["feval"][0].remove(str(other))


@pytest.mark.parametrize("hub_id", ["", "../../etc", "/abs/folder", "org/name/extra", "~/x", "org/..", "a b/c"])
def test_hub_ids_are_hub_ids(comfy: SimpleNamespace, hub_id: str) -> None:
    with pytest.raises(ValueError, match="Hugging Face id"):
        comfy.nodes["FEvalModelLoader"].execute("hub id", "tiny", hub_id, "auto", "cpu", "auto")


def test_hub_downloads_go_into_the_models_folder(comfy: SimpleNamespace, handle, monkeypatch) -> None:
    calls = []

    def fake(path_or_id, **kwargs):
        calls.append((path_or_id, kwargs))
        return handle.scorer

    loader_module = comfy.pack.nodes.loader
    monkeypatch.setattr(loader_module.FEvalScorer, "from_pretrained", staticmethod(fake))
    out = comfy.nodes["FEvalModelLoader"].execute("hub id", "tiny", " org/feval-model ", "auto", "cpu", "float32")[0]
    (repo, kwargs), = calls
    assert repo == "org/feval-model" and out.name == "org/feval-model"
    assert kwargs["cache_dir"] == str(comfy.models / "feval" / "hub-cache")
    assert kwargs["dtype"] is torch.float32 and kwargs["device"] == "cpu" and kwargs["face_device"] == "cpu"


def test_hub_failure_says_how_to_get_the_model(comfy: SimpleNamespace) -> None:
    with pytest.raises(OSError, match="huggingface-cli download org/not-here --cache-dir .*hub-cache"):
        comfy.nodes["FEvalModelLoader"].execute("zero-shot (base VLM)", "tiny", "org/not-here", "auto", "cpu", "auto")


def test_face_pack_choice_is_checked(comfy: SimpleNamespace) -> None:
    loader = comfy.nodes["FEvalModelLoader"]
    with pytest.raises(ValueError, match="trained on face embeddings from the 'tiny_face' pack"):
        loader.execute("models folder", "tiny", "", "other_pack", "cpu", "auto")
    for bad in ("../tiny_face", "/abs/pack", "a b"):  # the name is refused before any hint is built from it
        with pytest.raises(ValueError, match="must be a folder name") as err:
            loader.execute("models folder", "tiny", "", bad, "cpu", "auto")
        assert "download" not in str(err.value)
        assert loader.validate_inputs("models folder", "tiny", "", bad) == str(err.value)
    with pytest.raises(FileNotFoundError, match="download antelopev2.zip .* so that .*insightface.models.antelopev2"):
        loader.execute("zero-shot (base VLM)", "vlm", "", "antelopev2", "cpu", "auto")
    with pytest.raises(ValueError, match="not available here"):
        loader.execute("models folder", "tiny", "", "auto", "cuda:7", "auto")


# -- scoring ---------------------------------------------------------------------------------------


def test_score_node_matches_the_engine(comfy: SimpleNamespace, handle, images: torch.Tensor, faces) -> None:
    ref = as_batch(faces["a"])
    out = comfy.nodes["FEvalScoreFaces"].execute(handle, images, prompt="a photo of a woman", reference=ref)
    scores, *columns, summary, preview, answer = out.args
    assert len(answer) == 4 and all(math.isnan(a) for a in answer)  # no question asked
    batch = (images.numpy() * 255).round().astype(np.uint8)
    expected = handle.scorer.score(batch, "a photo of a woman", (ref[0].numpy() * 255).round().astype(np.uint8)).scores
    expected[2, DIMENSIONS.index("identity")] = math.nan  # image 2 has no face: identity is withdrawn
    torch.testing.assert_close(scores.values, expected, equal_nan=True)
    assert scores.values.dtype == torch.float32 and scores.values.shape == (4, 4)
    for d, col in zip(DIMENSIONS, columns):
        assert len(col) == 4 and all(isinstance(v, float) for v in col)
        np.testing.assert_array_equal(np.array(col, dtype=np.float32), scores.values[:, DIMENSIONS.index(d)].numpy())
    doc = json.loads(summary)
    assert doc["range"] == [0.0, 100.0] and doc["higher_is_better"] is True
    assert doc["images"][2]["identity"] is None and doc["images"][2]["faces"] == 0
    assert doc["images"][2]["notes"] == ["no face detected in the image; identity not scored"]  # said once
    assert preview.shape == images.shape and preview.dtype == torch.float32
    assert 0.0 <= float(preview.min()) and float(preview.max()) <= 1.0
    assert not torch.equal(preview, images)  # the scores are drawn on
    assert len(out.ui["images"]) == 4 and "0-100, higher is better" in out.ui["text"][0]


def test_missing_prompt_and_reference_give_nan_with_a_reason(comfy: SimpleNamespace, handle, images) -> None:
    out = comfy.nodes["FEvalScoreFaces"].execute(handle, images)
    scores = out.args[0]
    for d in ("identity", "correspondence"):
        assert torch.isnan(scores.values[:, DIMENSIONS.index(d)]).all()
    assert not torch.isnan(scores.values[:, DIMENSIONS.index("quality")]).any()
    text = scores.to_text()
    assert "connect a reference face image" in text and "type the generation prompt" in text


def test_zero_shot_identity_without_a_face_is_nan(comfy: SimpleNamespace, zero_shot, faces) -> None:
    imgs = as_batch(faces["a"], faces["none"], faces["b"])
    out = comfy.nodes["FEvalScoreFaces"].execute(zero_shot, imgs, quality=False, authenticity=False,
                                                 correspondence=False, reference=as_batch(faces["a_moved"]))
    ident = out.args[0].column("identity")
    assert ident[0] > 95 and math.isnan(ident[1]) and ident[2] < ident[0]
    assert "no face detected" in " ".join(out.args[0].notes[1])
    noref = comfy.nodes["FEvalScoreFaces"].execute(zero_shot, imgs, reference=as_batch(faces["none"]))
    assert all(math.isnan(v) for v in noref.args[0].column("identity"))
    assert "reference" in " ".join(noref.args[0].notes[0])


def test_trained_identity_is_nan_when_the_reference_has_no_face(comfy: SimpleNamespace, handle, faces) -> None:
    imgs = as_batch(faces["a"], faces["b"])
    out = comfy.nodes["FEvalScoreFaces"].execute(handle, imgs, quality=False, authenticity=False,
                                                 correspondence=False, reference=as_batch(faces["none"]))
    scores = out.args[0]
    assert all(math.isnan(v) for v in scores.column("identity"))
    assert all("no face detected in the reference image; identity not scored" in notes for notes in scores.notes)


def test_device_and_dtype_choices(comfy: SimpleNamespace, monkeypatch) -> None:
    patcher = comfy.pack.nodes.patcher
    assert patcher.placement("cpu") == (torch.device("cpu"), torch.device("cpu"))
    assert patcher.placement("auto") == (comfy.mm.get_torch_device(), comfy.mm.unet_offload_device())
    assert patcher.pick_dtype("auto", torch.device("cpu")) is torch.float32
    assert patcher.pick_dtype("auto", torch.device("cuda:0")) is torch.float32  # no bf16: fp32, never fp16
    monkeypatch.setattr(comfy.mm, "should_use_bf16", lambda *a, **k: True)
    assert patcher.pick_dtype("auto", torch.device("cuda:0")) is torch.bfloat16
    assert patcher.pick_dtype("float16", torch.device("cpu")) is torch.float16
    with pytest.raises(ValueError, match="dtype must be one of"):
        patcher.pick_dtype("int8", torch.device("cpu"))
    from feval_core.model.backbone import default_dtype  # the engine's rule, which the node follows

    assert default_dtype("cpu") is torch.float32 and default_dtype("cuda:0", bf16=False) is torch.float32
    assert default_dtype("cuda:0", bf16=True) is torch.bfloat16


def test_score_node_input_errors(comfy: SimpleNamespace, handle, images) -> None:
    node = comfy.nodes["FEvalScoreFaces"]
    with pytest.raises(ValueError, match="one reference for all or one per image"):
        node.execute(handle, images, reference=images[:2])
    with pytest.raises(ValueError, match="no dimension selected"):
        node.execute(handle, images, quality=False, authenticity=False, identity=False, correspondence=False)
    with pytest.raises(ValueError, match="IMAGE batch"):
        node.execute(handle, images[0])
    with pytest.raises(TypeError, match="Load F-Eval model"):
        node.execute("not a model", images)


def test_progress_and_interrupt_between_batches(comfy: SimpleNamespace, handle, faces, monkeypatch) -> None:
    imgs = as_batch(*[faces["a"]] * 6)
    seen = []
    calls = []
    original = handle.scorer.iter_scores

    def counting(*args, **kwargs):
        for part in original(*args, **kwargs):
            calls.append(len(part))
            yield part

    monkeypatch.setattr(handle.scorer, "iter_scores", counting)
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    try:
        comfy.nodes["FEvalScoreFaces"].execute(handle, imgs, identity=False, correspondence=False, batch_size=2)
        assert seen == [(2, 6), (4, 6), (6, 6)]
        seen.clear()
        calls.clear()

        def interrupt_after_first(value, total, preview, node_id=None):
            seen.append((value, total))
            comfy.mm.interrupt_current_processing(True)

        comfy.utils.set_progress_bar_global_hook(interrupt_after_first)
        with pytest.raises(comfy.mm.InterruptProcessingException):
            comfy.nodes["FEvalScoreFaces"].execute(handle, imgs, identity=False, correspondence=False, batch_size=2)
        assert calls == [2] and seen == [(2, 6)]  # stopped after the first batch
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        comfy.mm.interrupt_current_processing(False)


def test_model_is_placed_and_freed_by_model_management(comfy: SimpleNamespace, handle, faces) -> None:
    mm = comfy.mm
    imgs = as_batch(faces["a"], faces["b"])
    mm.EVENTS.clear()
    first = comfy.nodes["FEvalScoreFaces"].execute(handle, imgs, identity=False).args[0].values
    patcher = handle.patcher
    assert ("load_models_gpu", (patcher,), True) in mm.EVENTS
    assert patcher in mm.loaded_models() and patcher.loaded_size() == patcher.model_size() > 0
    moves = []
    original_to = handle.scorer.model.to
    handle.scorer.model.to = lambda *a, **k: (moves.append(a[0] if a else k.get("device")), original_to(*a, **k))[1]
    try:
        mm.unload_all_models()  # ComfyUI's "unload models"
        assert ("detach", patcher) in mm.EVENTS and patcher.loaded_size() == 0
        assert patcher not in mm.loaded_models() and moves == [patcher.offload_device]
        handle.load()
        mm.free_memory(1, mm.get_torch_device())  # ComfyUI needing a little room: the whole model goes
        assert ("partially_unload", patcher, patcher.model_size()) in mm.EVENTS and patcher.loaded_size() == 0
        again = comfy.nodes["FEvalScoreFaces"].execute(handle, imgs, identity=False).args[0].values
    finally:
        del handle.scorer.model.to
    torch.testing.assert_close(again, first, equal_nan=True)  # reloaded, same numbers


# -- filter and best-of-N --------------------------------------------------------------------------


def test_filter_thresholds_weighted_total_and_missing(comfy: SimpleNamespace) -> None:
    nan = math.nan
    scores = make_scores(comfy, [[80, 70, nan, 60], [40, 90, 90, 90], [90, 90, 20, nan], [60, 60, 60, 60]])
    imgs = torch.rand(4, 8, 8, 3)
    node = comfy.nodes["FEvalFilterByScore"]
    out = node.execute(imgs, scores, min_quality=50, min_identity=30)
    kept, kept_scores, indices, count, rejected, report = out.args
    assert indices == "3" and count == 1  # 0: identity n/a, 1: quality 40, 2: identity 20
    assert torch.equal(kept, imgs[[3]]) and torch.equal(rejected, imgs[[0, 1, 2]])
    assert torch.equal(kept_scores.values, scores.values[[3]])
    assert "#0 dropped: identity n/a" in report and "#1 dropped: quality 40.0 < 50.0" in report
    out = node.execute(imgs, scores, min_quality=50, min_identity=30, missing="ignore")
    assert out.args[2] == "0,3"
    # the total is a weighted mean of the scored dimensions: n/a is skipped, not counted as 0
    out = node.execute(imgs, scores, min_total=70, weight_correspondence=0.0)
    assert out.args[2] == "0,1"  # totals 75.0 (n/a skipped), 73.3, 66.7, 60.0
    assert "#2 dropped: total 66.7 < 70.0" in out.args[5]


def test_filter_top_k_ties_go_to_the_earlier_image(comfy: SimpleNamespace) -> None:
    scores = make_scores(comfy, [[50] * 4, [70] * 4, [70] * 4, [60] * 4, [70] * 4])
    imgs = torch.rand(5, 4, 4, 3)
    out = comfy.nodes["FEvalFilterByScore"].execute(imgs, scores, top_k=2)
    assert out.args[2] == "1,2" and torch.equal(out.args[0], imgs[[1, 2]])
    assert "#4 dropped: not in the top 2 (total 70.0)" in out.args[5]
    out = comfy.nodes["FEvalFilterByScore"].execute(imgs, scores, top_k=10)
    assert out.args[2] == "1,2,4,3,0"  # best first, ties in batch order


def is_blocker(value) -> bool:
    """The value ComfyUI's executor recognises: an instance of ``comfy_execution.graph_utils.ExecutionBlocker``
    (the class there, whatever provides that module), not an empty batch and not a pack class of its own."""
    cls = type(value)
    return (cls.__module__, cls.__name__) == ("comfy_execution.graph_utils", "ExecutionBlocker")


def test_empty_filter_blocks_downstream_instead_of_crashing(comfy: SimpleNamespace) -> None:
    """The pack's outputs when nothing passes: blockers (silent) in place of the empty image and score batches,
    the other outputs still usable. That ComfyUI then skips the consumers is checked against a real ComfyUI
    in tests/test_comfyui_real.py."""
    scores = make_scores(comfy, [[10] * 4, [20] * 4])
    imgs = torch.rand(2, 8, 8, 3)
    out = comfy.nodes["FEvalFilterByScore"].execute(imgs, scores, min_quality=99)
    kept, kept_scores, indices, count, rejected, report = out.args
    for blocked in (kept, kept_scores):
        assert is_blocker(blocked) and blocked.message is None  # skipped silently, not an error
        assert not isinstance(blocked, (torch.Tensor, comfy.pack.nodes.scores.FEvalScores))
    assert indices == "" and count == 0 and torch.equal(rejected, imgs)
    assert report.startswith("Filter by F-Eval score: no image passed (0 of 2 kept)")
    assert "#0 dropped: quality 10.0 < 99.0" in report and "#1 dropped: quality 20.0 < 99.0" in report
    assert out.ui.as_dict()["text"] == (report,)
    everything = comfy.nodes["FEvalFilterByScore"].execute(imgs, scores)
    assert torch.equal(everything.args[0], imgs) and everything.args[3] == 2
    assert is_blocker(everything.args[4])  # nothing rejected: the 'rejected' consumers are skipped instead


def test_filter_needs_the_scores_of_these_images(comfy: SimpleNamespace) -> None:
    scores = make_scores(comfy, [[10] * 4, [20] * 4])
    with pytest.raises(ValueError, match="3 images but scores for 2"):
        comfy.nodes["FEvalFilterByScore"].execute(torch.rand(3, 4, 4, 3), scores)
    with pytest.raises(TypeError, match="scores must come from"):
        comfy.nodes["FEvalFilterByScore"].execute(torch.rand(2, 4, 4, 3), [1.0, 2.0])


def test_pick_best_of_groups(comfy: SimpleNamespace) -> None:
    nan = math.nan
    rows = [[50] * 4, [80] * 4, [80] * 4, [nan] * 4, [nan] * 4, [nan] * 4, [10] * 4]
    scores = make_scores(comfy, rows)
    imgs = torch.rand(7, 4, 4, 3)
    node = comfy.nodes["FEvalPickBest"]
    out = node.execute(imgs, scores, group_size=3)
    best, best_scores, indices, report = out.args
    assert indices == "1,6" and torch.equal(best, imgs[[1, 6]])  # tie 1/2 -> 1; group 1 unscored; group 2 short
    assert "group 1 (#3-#5): no image has a score" in report and "the last group has 1" in report
    assert node.execute(imgs, scores, group_size=0, keep=2).args[2] == "1,2"
    only_nan = make_scores(comfy, [[nan] * 4, [nan] * 4])
    out = node.execute(imgs[:2], only_nan)
    assert is_blocker(out.args[0]) and out.args[2] == ""
    with pytest.raises(ValueError, match="weights"):
        node.execute(imgs, scores, weight_quality=-1.0)


# -- face similarity -------------------------------------------------------------------------------


def test_face_similarity_without_the_lmm(comfy: SimpleNamespace, faces) -> None:
    imgs = as_batch(faces["a"], faces["a_moved"], faces["b"], faces["none"])
    node = comfy.nodes["FEvalFaceSimilarity"]
    cos, ident, scores, report = node.execute(imgs, as_batch(faces["a"]), "tiny_face", "cpu").args
    assert cos[0] > 0.99 and cos[1] > 0.99 and cos[2] < 0.9 and math.isnan(cos[3])
    assert ident == pytest.approx([100 * min(max(c, 0.0), 1.0) for c in cos], nan_ok=True)
    assert scores.dims == ("identity",) and scores.faces == [1, 1, 1, 0]
    assert scores.notes[3] == ["no face detected in the image; identity not scored"] and "n/a" in report
    kept = comfy.nodes["FEvalFilterByScore"].execute(imgs, scores, min_identity=95).args
    assert kept[2] == "0,1"
    per_image = node.execute(imgs[:2], as_batch(faces["none"], faces["a"]), "tiny_face", "cpu").args
    assert math.isnan(per_image[0][0]) and per_image[0][1] > 0.99
    assert "no face detected in the reference image; identity not scored" in per_image[2].notes[0]


def test_face_similarity_reuses_a_loaded_model_and_names_missing_packs(comfy: SimpleNamespace, zero_shot,
                                                                       faces) -> None:
    node = comfy.nodes["FEvalFaceSimilarity"]
    imgs = as_batch(faces["a"], faces["b"])
    with_model = node.execute(imgs, as_batch(faces["a"]), "buffalo_l", "cpu", model=zero_shot).args
    alone = node.execute(imgs, as_batch(faces["a"]), "tiny_face", "cpu").args
    assert with_model[0] == pytest.approx(alone[0])
    with pytest.raises(FileNotFoundError, match="buffalo_l"):
        node.execute(imgs, as_batch(faces["a"]), "buffalo_l", "cpu")
    with pytest.raises(ValueError, match="folder name"):
        node.execute(imgs, as_batch(faces["a"]), "../../x", "cpu")
