"""Restoration pairs: the low-quality input (``lq``) reaches the quality row, from the API, a manifest (training
and evaluation) and the command line; no other dimension changes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from feval_core import DIMENSIONS
from feval_core.data.manifest import ManifestRow
from feval_core.model.rows import Row, build_row_text
from feval_core.train.data import expand_rows


@pytest.fixture(scope="module")
def pair(faces) -> tuple[np.ndarray, np.ndarray]:
    restored = faces["a"]
    lq = np.clip(restored.astype(np.int16) + np.random.default_rng(0).normal(0, 40, restored.shape), 0, 255)
    return restored, lq.astype(np.uint8)


def test_the_quality_row_shows_the_low_quality_input_first(tiny_scorer, pair) -> None:
    restored, lq = (Image.fromarray(a) for a in pair)
    text, images, _ = build_row_text(tiny_scorer.model.processor, Row(restored, "quality", lq=lq), 0)
    assert images == [lq, restored] and "Low-quality input:" in text and "Restored image to rate:" in text
    text, images, _ = build_row_text(tiny_scorer.model.processor, Row(restored, "authenticity", lq=lq), 0)
    assert images == [restored] and "Low-quality" not in text  # only quality compares with the input


def test_lq_changes_quality_and_nothing_else(tiny_scorer, pair) -> None:
    restored, lq = pair
    alone = tiny_scorer.score(restored, prompts="a portrait").scores
    paired = tiny_scorer.score(restored, prompts="a portrait", lq=lq).scores
    q = DIMENSIONS.index("quality")
    assert abs(float(paired[0, q]) - float(alone[0, q])) > 1e-4
    others = [j for j in range(len(DIMENSIONS)) if j != q]
    torch.testing.assert_close(paired[:, others], alone[:, others], equal_nan=True)


def test_an_unusable_lq_makes_quality_nan_with_the_reason(tiny_scorer, pair, tmp_path) -> None:
    bad = tmp_path / "lq.png"
    bad.write_bytes(b"")
    res = tiny_scorer.score(pair[0], lq=str(bad), dims="quality,authenticity")
    assert math.isnan(float(res.scores[0, 0])) and not math.isnan(float(res.scores[0, 1]))
    assert any(w.startswith("low-quality input unusable") for w in res.warnings[0])


def test_a_manifest_lq_reaches_training_and_evaluation(tiny_scorer, pair, tmp_path) -> None:
    from feval_core.evaluate.report import predict

    for name, arr in zip(("restored.png", "lq.png"), pair):
        Image.fromarray(arr).save(tmp_path / name)
    row = ManifestRow(image=tmp_path / "restored.png", task="restoration", lq=tmp_path / "lq.png",
                      mos={"quality": 70.0, "identity": 60.0}, line=1)
    examples = {e.dim: e for e in expand_rows([row])}
    assert examples["quality"].lq == str(tmp_path / "lq.png") and examples["identity"].lq is None
    assert examples["identity"].ref == str(tmp_path / "lq.png")  # identity of a restoration: against its input
    preds = {p.dim: p.pred for p in predict(tiny_scorer, [row], progress=False)}
    direct = tiny_scorer.score(str(tmp_path / "restored.png"), refs=str(tmp_path / "lq.png"),
                               lq=str(tmp_path / "lq.png"), dims="quality,identity").scores[0]
    assert preds["quality"] == pytest.approx(float(direct[0]), abs=1e-5)
    ident = float(direct[DIMENSIONS.index("identity")])
    assert (math.isnan(preds["identity"]) and math.isnan(ident)) or preds["identity"] == pytest.approx(ident, abs=1e-5)
    # and the training batch of the quality example shows the input beside the restoration
    from feval_core.train.data import Collator, FaceCache

    cache = FaceCache(tmp_path / "faces.safetensors")
    cache.entries = {FaceCache.key(p): None for p in (row.image, row.lq)}
    batch = Collator(tiny_scorer.model, list(examples.values()), cache)([0, 1])["batch"]
    by_dim = {r.dim: r for r in batch.rows}
    assert by_dim["quality"].lq is not None and by_dim["identity"].lq is None
    assert np.array_equal(np.asarray(by_dim["quality"].lq), pair[1])


def test_lq_on_the_command_line(tiny_ckpt, pair, tmp_path) -> None:
    from feval_core.cli import main

    for name, arr in zip(("restored.png", "lq.png"), pair):
        Image.fromarray(arr).save(tmp_path / name)
    out_a, out_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    args = ["score", str(tmp_path / "restored.png"), "--model", str(tiny_ckpt), "--device", "cpu", "--dims", "quality"]
    assert main([*args, "--out", str(out_a)]) == 0
    assert main([*args, "--out", str(out_b), "--lq", str(tmp_path / "lq.png")]) == 0
    a, b = (json.loads(p.read_text()) for p in (out_a, out_b))
    assert a["quality"] != b["quality"]
