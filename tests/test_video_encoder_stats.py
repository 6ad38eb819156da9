"""The video encoders' normalisation comes from the model's preprocessor_config.json, read as every feval config is
(size-limited plain JSON); a broken or nonsensical file is a ConfigError naming it, not a crash in torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from feval_core.errors import ConfigError
from feval_core.testing.video import build_tiny_temporal
from feval_core.video.encoders import IMAGENET_MEAN, TemporalEncoder


@pytest.fixture(scope="module")
def temporal(tmp_path_factory) -> Path:
    return build_tiny_temporal(tmp_path_factory.mktemp("temporal") / "videomae")


def _write(folder: Path, text: str | None) -> None:
    path = folder / "preprocessor_config.json"
    if text is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(text, encoding="utf-8")


def test_stats_are_read_from_the_preprocessor_config(temporal):
    _write(temporal, json.dumps({"image_mean": [0.5, 0.25, 0.125], "image_std": 0.5}))
    enc = TemporalEncoder.from_pretrained(str(temporal))
    assert enc.mean.flatten().tolist() == [0.5, 0.25, 0.125]
    assert enc.std.flatten().tolist() == [0.5, 0.5, 0.5]  # one number applies to every channel
    _write(temporal, None)
    enc = TemporalEncoder.from_pretrained(str(temporal))
    torch.testing.assert_close(enc.mean.flatten(), torch.tensor(IMAGENET_MEAN))


@pytest.mark.parametrize(("text", "match"), [
    ("{not json", "not valid JSON"),
    ("[0.5, 0.5, 0.5]", "JSON object"),
    (json.dumps({"image_mean": [0.5, 0.5]}), "three numbers"),
    (json.dumps({"image_mean": ["a", "b", "c"]}), "three numbers"),
    (json.dumps({"image_std": [0.5, 0.0, 0.5]}), "must be positive"),
])
def test_a_broken_preprocessor_config_is_a_clear_error(temporal, text, match):
    _write(temporal, text)
    try:
        with pytest.raises(ConfigError, match=match) as err:
            TemporalEncoder.from_pretrained(str(temporal))
        assert "preprocessor_config.json" in str(err.value)
    finally:
        _write(temporal, None)
