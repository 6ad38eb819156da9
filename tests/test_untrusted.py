"""Checkpoints and configs that someone else shared: what feval refuses, and that it refuses before reading.

Rules under test (``feval_core/checkpoint.py``, ``feval_core/config.py``):

* safetensors and validated JSON only: a pickle-based file anywhere in a checkpoint folder is refused, and a
  plain VLM folder with only pickle weights too; a ``.safetensors`` file that is not one is refused;
* symbolic links inside a checkpoint may point only inside it (or, for a Hugging Face cache snapshot, into
  that repository's ``blobs/``); links out of it, loops and dangling links out are refused;
* relative paths in ``feval_config.json`` (``base_model``, ``face.root``) may not climb out with ``..``;
* ``trust_remote_code`` is on only when the caller asks: a saved ``true`` is ignored, with a warning;
* ``feval_config.json`` and every ``adapters/<dim>/adapter_config.json`` are size- and depth-limited JSON
  objects with typed fields; anything else is a ``ConfigError`` that names the file and the field.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feval_core import FEvalScorer
from feval_core.cli import main
from feval_core.errors import CheckpointError, ConfigError, FEvalError
from feval_core.model.checkpoint import check_links, resolve_checkpoint
from feval_core.model.config import CONFIG_NAME, FEvalConfig


class _Canary:
    """Unpickling this creates a folder: proof that something unpickled a file it should not have."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def canary_pickle(marker: Path) -> bytes:
    return pickle.dumps(_Canary(marker))


@pytest.fixture()
def ck(tiny_ckpt, tmp_path) -> Path:
    """A private copy of the tiny checkpoint to tamper with."""
    return Path(shutil.copytree(tiny_ckpt, tmp_path / "ck"))


@pytest.fixture()
def no_model_load(monkeypatch):
    """Fail loudly if feval gets as far as building the model: refusals must come first."""
    from feval_core.model.lmm import FEvalModel

    def boom(*a, **k):
        raise AssertionError("the checkpoint was refused too late: the model was already being built")

    monkeypatch.setattr(FEvalModel, "build", boom)


def _edit_config(folder: Path, **changes) -> None:
    data = json.loads((folder / CONFIG_NAME).read_text())
    data.update(changes)
    (folder / CONFIG_NAME).write_text(json.dumps(data))


# -- pickles --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rel", [
    "adapters/quality/adapter_model.bin",
    "adapters/identity/extra/weights.pt",
    "backbone/pytorch_model.bin",
    "backbone/nested/deeper/optimizer.pth",
    "face_pack/models/tiny_face/det.pkl",
    "training_args.bin",
    "projectors.ckpt",
])
def test_pickle_anywhere_in_a_checkpoint_is_refused_unopened(ck, tmp_path, rel, no_model_load):
    marker = tmp_path / "UNPICKLED"
    (ck / rel).parent.mkdir(parents=True, exist_ok=True)
    (ck / rel).write_bytes(canary_pickle(marker))
    with pytest.raises(CheckpointError, match="pickle") as err:
        FEvalScorer.from_pretrained(ck, device="cpu")
    assert Path(rel).name in str(err.value)
    assert not marker.exists()


def test_bin_only_backbone_is_refused(ck, tmp_path):
    marker = tmp_path / "UNPICKLED"
    (ck / "backbone" / "model.safetensors").unlink()
    (ck / "backbone" / "pytorch_model.bin").write_bytes(canary_pickle(marker))
    with pytest.raises(CheckpointError, match="pickle"):
        FEvalScorer.from_pretrained(ck, device="cpu")
    # the same folder as a plain VLM (zero-shot): refused by the backbone loader, which names the fix
    with pytest.raises(CheckpointError, match="safetensors only"):
        FEvalScorer.from_pretrained(ck / "backbone", device="cpu", face_root=ck / "face_pack")
    assert not marker.exists()


def test_plain_vlm_with_safetensors_and_a_pickle_loads_only_the_safetensors(ck, tmp_path):
    marker = tmp_path / "UNPICKLED"
    (ck / "backbone" / "pytorch_model.bin").write_bytes(canary_pickle(marker))
    scorer = FEvalScorer.from_pretrained(ck / "backbone", device="cpu", face_root=ck / "face_pack")
    assert scorer.config.mode == "zero_shot"
    assert not marker.exists(), "the pickle next to model.safetensors was unpickled"


@pytest.mark.parametrize("rel, content", [
    ("adapters/quality/adapter_model.safetensors", "pickle"),
    ("projectors.safetensors", "truncated"),
    ("backbone/model.safetensors", "garbage"),
    ("projectors.safetensors", "huge-header"),
    ("projectors.safetensors", "empty"),
])
def test_files_that_only_pretend_to_be_safetensors_are_refused(ck, tmp_path, rel, content, no_model_load):
    path = ck / rel
    data = path.read_bytes()
    path.write_bytes({
        "pickle": canary_pickle(tmp_path / "UNPICKLED"),
        "truncated": data[:-7],
        "garbage": b"\x00" * 64,
        "huge-header": (2**60).to_bytes(8, "little") + b"{}",
        "empty": b"",
    }[content])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        FEvalScorer.from_pretrained(ck, device="cpu")
    assert not (tmp_path / "UNPICKLED").exists()


# -- symlinks -------------------------------------------------------------------------------------------
def _secret(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "id_ed25519"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text("PRIVATE KEY")
    return secret


@pytest.mark.parametrize("rel, target", [
    ("backbone/notes.txt", "file"),             # a file link out
    ("adapters/quality", "adapter-dir"),        # a whole expert folder elsewhere
    ("backbone", "backbone-dir"),               # the backbone elsewhere
    ("feval_config.json", "config-file"),       # even the config itself
    ("face_pack/models/tiny_face/x.onnx", "dangling"),  # a link out to nothing (yet)
])
def test_symlinks_out_of_a_checkpoint_are_refused(ck, tmp_path, rel, target, no_model_load):
    outside = tmp_path / "outside"
    outside.mkdir()
    link = ck / rel
    if target == "file":
        dest = _secret(tmp_path)
    elif target == "dangling":
        dest = outside / "not-there-yet.onnx"
    else:
        dest = outside / link.name
        shutil.move(str(link), str(dest))
    link.symlink_to(dest, target_is_directory=dest.is_dir())
    with pytest.raises(CheckpointError, match="outside the checkpoint folder") as err:
        FEvalScorer.from_pretrained(ck, device="cpu")
    assert rel in str(err.value) and "absolute" in str(err.value)


def test_symlink_loop_is_refused(ck, no_model_load):
    (ck / "backbone" / "a").symlink_to(ck / "backbone" / "b")
    (ck / "backbone" / "b").symlink_to(ck / "backbone" / "a")
    with pytest.raises(CheckpointError, match="cannot be resolved|outside"):
        FEvalScorer.from_pretrained(ck, device="cpu")


def test_symlinks_inside_the_checkpoint_are_fine(ck, faces, tiny_scorer):
    """A link to another file of the same checkpoint is followed (the scores do not change)."""
    spare = ck / "spare"
    spare.mkdir()
    weights = ck / "adapters" / "quality" / "adapter_model.safetensors"
    shutil.move(str(weights), str(spare / "quality.safetensors"))
    weights.symlink_to(Path("..") / ".." / "spare" / "quality.safetensors")
    scorer = FEvalScorer.from_pretrained(ck, device="cpu")
    import torch

    torch.testing.assert_close(scorer.score([faces["a"]]).scores, tiny_scorer.score([faces["a"]]).scores,
                               rtol=0, atol=1e-5, equal_nan=True)


def test_a_linked_checkpoint_folder_itself_is_the_users_choice(ck, tmp_path):
    link = tmp_path / "my-models" / "feval"
    link.parent.mkdir()
    link.symlink_to(ck, target_is_directory=True)
    folder, config = resolve_checkpoint(link)
    assert folder == ck.resolve() and config.mode == "trained"


def test_hugging_face_cache_snapshot_links_into_blobs_are_fine(ck, tmp_path):
    """The hub cache keeps files in ``blobs/`` and links them from ``snapshots/<rev>/``."""
    repo = tmp_path / "hub" / "models--org--feval"
    snap, blobs = repo / "snapshots" / "0123abc", repo / "blobs"
    blobs.mkdir(parents=True)
    for i, f in enumerate(sorted(p for p in ck.rglob("*") if p.is_file())):
        rel = f.relative_to(ck)
        shutil.copy(f, blobs / f"blob{i}")
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        (snap / rel).symlink_to(os.path.relpath(blobs / f"blob{i}", (snap / rel).parent))
    check_links(snap)
    folder, config = resolve_checkpoint(snap)
    assert folder == snap.resolve() and config.base_model == "backbone"
    # ... but a snapshot link to elsewhere is still refused
    (snap / "backbone" / "x.json").symlink_to(_secret(tmp_path))
    with pytest.raises(CheckpointError, match="outside the checkpoint folder"):
        check_links(snap)


# -- paths in feval_config.json ---------------------------------------------------------------------------
@pytest.mark.parametrize("key, value", [
    ("base_model", "../elsewhere"),
    ("base_model", "../../elsewhere"),
    ("base_model", "backbone/../../elsewhere"),
    ("face.root", "../faces"),
])
def test_relative_paths_may_not_climb_out_of_the_checkpoint(ck, tmp_path, key, value, no_model_load):
    # the target exists and is a real backbone / face pack: still refused
    shutil.copytree(ck / "backbone", tmp_path / "elsewhere")
    shutil.copytree(ck / "face_pack", tmp_path / "faces")
    if key == "face.root":
        data = json.loads((ck / CONFIG_NAME).read_text())
        _edit_config(ck, face={**data["face"], "root": value})
    else:
        _edit_config(ck, base_model=value)
    with pytest.raises(ConfigError, match="points outside the checkpoint folder"):
        FEvalScorer.from_pretrained(ck, device="cpu")


def test_absolute_base_model_is_allowed(ck, tmp_path, faces, tiny_scorer):
    """An absolute path is explicit (the user's own machine layout), unlike a relative escape."""
    elsewhere = tmp_path / "elsewhere"
    shutil.move(str(ck / "backbone"), str(elsewhere))
    _edit_config(ck, base_model=str(elsewhere))
    import torch

    scores = FEvalScorer.from_pretrained(ck, device="cpu").score([faces["a"]]).scores
    torch.testing.assert_close(scores, tiny_scorer.score([faces["a"]]).scores, rtol=0, atol=1e-5, equal_nan=True)


# -- trust_remote_code -----------------------------------------------------------------------------------
@pytest.fixture()
def remote_code_calls(monkeypatch) -> list:
    """Record the trust_remote_code value of every backbone / processor load."""
    import transformers

    calls: list = []
    for cls in (transformers.AutoModelForImageTextToText, transformers.AutoProcessor, transformers.AutoConfig):
        orig = cls.from_pretrained

        def spy(*a, _orig=orig, **k):
            calls.append(k.get("trust_remote_code"))
            return _orig(*a, **k)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    return calls


def test_saved_trust_remote_code_is_ignored_unless_the_caller_asks(ck, remote_code_calls, caplog):
    _edit_config(ck, trust_remote_code=True)
    with caplog.at_level(logging.WARNING, logger="feval_core"):
        assert FEvalConfig.load(ck).trust_remote_code is False
    assert "trust_remote_code" in caplog.text and "ignored" in caplog.text

    scorer = FEvalScorer.from_pretrained(ck, device="cpu")
    assert scorer.config.trust_remote_code is False
    assert remote_code_calls and not any(remote_code_calls), remote_code_calls

    remote_code_calls.clear()
    scorer = FEvalScorer.from_pretrained(ck, device="cpu", trust_remote_code=True)
    assert scorer.config.trust_remote_code is True
    assert remote_code_calls and all(remote_code_calls), remote_code_calls


def test_cli_enables_remote_code_only_with_the_flag(ck, faces, tmp_path, remote_code_calls):
    from PIL import Image

    _edit_config(ck, trust_remote_code=True)
    img = tmp_path / "a.png"
    Image.fromarray(faces["a"]).save(img)
    base = ["score", str(img), "--model", str(ck), "--device", "cpu", "--dims", "quality"]
    assert main(base) == 0
    assert remote_code_calls and not any(remote_code_calls)
    remote_code_calls.clear()
    assert main([*base, "--trust-remote-code"]) == 0
    assert remote_code_calls and all(remote_code_calls)


# -- adapter_config.json ---------------------------------------------------------------------------------
def _deep(n: int) -> str:
    return "[" * n + "]" * n


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"r": 4, "lora_alpha": NaN, "peft_type": "LORA"}', "not valid JSON"),
    ("[1, 2, 3]", "JSON object"),
    ('"just a string"', "JSON object"),
    ("", "not valid JSON"),
    (b"\xff\xfe{\x00}\x00", "not valid JSON"),
    ('{"r": 4, "lora_alpha": 8, "peft_type": "LORA", "pad": "' + "x" * 300_000 + '"}', "Refusing"),
    ('{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "junk": ' + _deep(100_000) + "}", "nested"),
    ('{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "junk": ' + _deep(20) + "}", "nested deeper"),
    ('{"peft_type": "LORA", "r": {"a": [1, {"b": null}]}, "lora_alpha": 8}', "r must be an integer"),
    ('{"peft_type": "LORA", "r": true, "lora_alpha": 8}', "r must be an integer"),
    ('{"peft_type": "LORA", "r": 4, "lora_alpha": "8"}', "lora_alpha must be"),
    ('{"peft_type": "IA3", "r": 4, "lora_alpha": 8}', "peft_type must be 'LORA'"),
    ('{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": [1, 2]}', "target_modules"),
    ('{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "megatron_config": {"a": 1}, "megatron_core": "os"}',
     "megatron_config must be null"),
    ('{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "modules_to_save": ["lm_head"]}', "modules_to_save"),
    ('{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "layer_replication": [[0, 2]]}', "layer_replication"),
])
def test_bad_adapter_configs_are_refused_before_peft_reads_them(ck, content, message, no_model_load):
    path = ck / "adapters" / "correspondence" / "adapter_config.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=message) as err:
        FEvalScorer.from_pretrained(ck, device="cpu")
    assert "adapter_config.json" in str(err.value)


def test_cli_reports_a_refused_checkpoint_in_one_line(ck, faces, tmp_path, caplog):
    from PIL import Image

    (ck / "adapters" / "quality" / "adapter_config.json").write_text("{oops")
    img = tmp_path / "a.png"
    Image.fromarray(faces["a"]).save(img)
    with caplog.at_level(logging.ERROR, logger="feval"):
        code = main(["score", str(img), "--model", str(ck), "--device", "cpu"])
    assert code == 2
    assert "adapter_config.json is not valid JSON" in caplog.text


def test_malformed_backbone_config_names_the_file(ck):
    (ck / "backbone" / "config.json").write_text('{"model_type": "qwen2_5_vl", oops')
    with pytest.raises(OSError, match=r"backbone.config\.json"):
        FEvalScorer.from_pretrained(ck, device="cpu")


# -- feval_config.json: any JSON in any field loads or is a ConfigError -------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20) | st.sampled_from(["quality", "trained", "levels", "router", "backbone", "../x"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
FIELDS = ["base_model", "mode", "score_mode", "dims", "num_face_tokens", "face_dim", "hidden_size", "lora_rank",
          "lora_alpha", "lora_dropout", "lora_target_modules", "routing", "max_image_pixels", "trust_remote_code",
          "face", "format_version"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(patch=st.dictionaries(st.sampled_from(FIELDS + ["face.pack", "face.root", "face.det_size",
                                                       "face.det_thresh", "extra"]), json_values, max_size=3))
def test_any_json_in_any_field_gives_a_valid_config_or_a_config_error(tiny_ckpt, tmp_path_factory, patch):
    data = json.loads((tiny_ckpt / CONFIG_NAME).read_text())
    for key, value in patch.items():
        if key.startswith("face.") and isinstance(data["face"], dict):
            data["face"][key[5:]] = value
        else:
            data[key] = value
    folder = tmp_path_factory.mktemp("cfg")
    (folder / CONFIG_NAME).write_text(json.dumps(data))
    try:
        cfg = FEvalConfig.load(folder)
    except ConfigError as exc:
        assert str(exc)
        return
    # what loads is well-typed: the engine can use it without further checks
    assert isinstance(cfg.base_model, str) and cfg.dims and all(isinstance(d, str) for d in cfg.dims)
    for name in ("num_face_tokens", "face_dim", "lora_rank", "lora_alpha", "format_version"):
        assert type(getattr(cfg, name)) is int
    assert cfg.max_image_pixels is None or type(cfg.max_image_pixels) is int
    assert type(cfg.trust_remote_code) is bool and cfg.trust_remote_code is False
    assert type(cfg.face.det_size) is int and isinstance(cfg.face.det_thresh, (int, float))
    assert cfg.face.root is None or isinstance(cfg.face.root, str)
    FEvalConfig.load(cfg.save(tmp_path_factory.mktemp("again")))  # and it round-trips


@pytest.mark.parametrize("content, message", [
    ('{"base_model": ' + _deep(100_000) + "}", "nested"),
    ('{"base_model": "x", "junk": ' + _deep(20) + "}", "nested deeper"),
    ('{"base_model": "x", "lora_dropout": NaN}', "not valid JSON"),
    ('{"base_model": "x", "lora_dropout": Infinity}', "not valid JSON"),
    (b'{"base_model": "\xff"}', "not valid JSON"),
    ('{"base_model": "x", "face": [1, 2]}', "face must be an object"),
    ('{"base_model": "x", "dims": {"quality": 1}}', "dims must be a list"),
    ('{"base_model": "x", "dims": ["quality", "quality"]}', "without repeats"),
    ('{"base_model": "x", "lora_target_modules": "(unclosed"}', "not a valid regex"),
    ('{"base_model": "x", "trust_remote_code": "yes"}', "true or false"),
])
def test_nested_garbage_configs_are_refused(tmp_path, content, message):
    (tmp_path / CONFIG_NAME).write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=message):
        FEvalConfig.load(tmp_path)


def test_every_refusal_is_a_feval_error():
    """So the CLI prints one line (exit 2) instead of a traceback."""
    assert issubclass(CheckpointError, FEvalError) and issubclass(ConfigError, FEvalError)
