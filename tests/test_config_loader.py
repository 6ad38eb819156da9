"""One config loader (``model.config.read_json_config``) for every saved config: each class round-trips through the
one writer, refuses unknown keys with its own fix, builds nested configs and tuples, keeps old-key handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feval_core.errors import ConfigError
from feval_core.fiqa.config import FIQAConfig
from feval_core.fiqa.prefilter import PrefilterConfig
from feval_core.fiqa.train_config import FIQATrainConfig
from feval_core.model.config import FaceEncoderConfig, FEvalConfig, read_json_config, read_json_object
from feval_core.train.config import TrainConfig
from feval_core.video.config import VideoConfig, VideoLimits

CASES = [  # (made, file name, what an unknown key's error says)
    (lambda: FEvalConfig(base_model="org/vlm", dims=("quality", "identity"), face={"pack": "p", "det_size": 320}),
     "feval_config.json", "valid keys are"),
    (lambda: TrainConfig(manifest="m.jsonl", base="org/vlm", out="run", dims=("quality",)), "train_config.json",
     "valid keys are"),
    (lambda: FIQAConfig.preset("vit_t", face=FaceEncoderConfig(pack="p")), "fiqa_config.json",
     "written by a newer feval"),
    (lambda: PrefilterConfig(points=5, face=FaceEncoderConfig(pack="p", det_size=128)), "prefilter_config.json",
     "valid keys are"),
    (lambda: VideoConfig(branches=("spatial", "face"), limits=VideoLimits(max_frames=99)), "video_config.json",
     "valid keys are"),
]


@pytest.mark.parametrize("make, name, unknown", CASES, ids=[c[1] for c in CASES])
def test_each_config_round_trips_and_refuses_unknown_keys(make, name, unknown, tmp_path: Path) -> None:
    config = make()
    config.save(tmp_path)
    again = type(config).load(tmp_path)
    assert again == config
    data = read_json_object(tmp_path / name)
    assert read_json_config(type(config), data) == config  # a parsed dict is read the same way
    (tmp_path / name).write_text(json.dumps({**data, "surprise": 1}))
    with pytest.raises(ConfigError, match=rf"{name}: unknown keys \['surprise'\]; .*{unknown}"):
        type(config).load(tmp_path)


def test_nested_configs_and_tuples_are_built_and_checked(tmp_path: Path) -> None:
    data = {"base_model": "org/vlm", "dims": ["quality"], "face": {"pack": "p", "det_size": 256}}
    config = read_json_config(FEvalConfig, data, what="cfg")
    assert config.dims == ("quality",) and isinstance(config.face, FaceEncoderConfig) and config.face.det_size == 256
    with pytest.raises(ConfigError, match=r"cfg: face: unknown keys \['pak'\]"):
        read_json_config(FEvalConfig, {**data, "face": {"pak": "p"}}, what="cfg")
    with pytest.raises(ConfigError, match=r"cfg: missing required keys \['base_model'\]"):
        read_json_config(FEvalConfig, {"dims": ["quality"]}, what="cfg")
    video = read_json_config(VideoConfig, {"portrait_labels": ["person", "hair"], "limits": {"max_frames": 5}})
    assert video.portrait_labels == ("person", "hair") and video.limits == VideoLimits(max_frames=5)
    with pytest.raises(TypeError, match="read_json_object"):
        read_json_config(tmp_path / "x.json", "a config")  # the parser's old call shape gets told what to use


def test_bad_values_keep_each_files_fix(tmp_path: Path) -> None:
    TrainConfig(manifest="m", base="b", out="o").save(tmp_path)
    data = json.loads((tmp_path / "train_config.json").read_text())
    (tmp_path / "train_config.json").write_text(json.dumps({**data, "batch_size": 0}))
    with pytest.raises(ConfigError, match=r"train_config.json: batch_size must be a positive integer.*do not edit"):
        TrainConfig.load(tmp_path)
    FIQATrainConfig(data="d", out="o").save(tmp_path)
    data = json.loads((tmp_path / "fiqa_train_config.json").read_text())
    (tmp_path / "fiqa_train_config.json").write_text(json.dumps({**data, "lr": -1}))
    with pytest.raises(ConfigError, match="lr must be.*delete the run folder"):
        FIQATrainConfig.load(tmp_path)


def test_fiqa_train_config_still_drops_keys_another_feval_wrote(tmp_path: Path) -> None:
    config = FIQATrainConfig(data="d", out="o", epochs=3)
    config.save(tmp_path)
    data = json.loads((tmp_path / "fiqa_train_config.json").read_text())
    (tmp_path / "fiqa_train_config.json").write_text(json.dumps({**data, "old_option": True}))
    assert FIQATrainConfig.load(tmp_path) == config
