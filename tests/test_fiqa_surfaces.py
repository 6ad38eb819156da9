"""``utility`` through the CLI (score, make-tiny, fiqa eval/import), the ComfyUI node and thresholds, and the reward."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from feval_core.cli import main
from feval_core.fiqa.scorer import FIQAScorer
from feval_core.testing.fiqa import write_identity_set
from tests.conftest import face_image


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("imgs")
    Image.fromarray(face_image(0)).save(d / "a.png")
    Image.fromarray(face_image(1)).save(d / "b.png")
    Image.fromarray(np.full((128, 128, 3), 20, np.uint8)).save(d / "none.png")
    (d / "bad.png").write_bytes(b"")
    return d


def _rows(path: Path) -> dict[str, dict]:
    return {Path(r["image"]).name: r for r in map(json.loads, path.read_text().splitlines())}


def test_score_utility_only_and_with_feval(tiny_fiqa, tiny_ckpt, images, tmp_path) -> None:
    expected = FIQAScorer.from_pretrained(tiny_fiqa, device="cpu").score([str(images / "a.png")]).utility
    assert main(["score", str(images), "--fiqa", str(tiny_fiqa), "--out", str(tmp_path / "u.jsonl")]) == 1
    rows = _rows(tmp_path / "u.jsonl")
    assert rows["a.png"]["utility"] == pytest.approx(float(expected[0]), abs=1e-3)
    assert rows["none.png"]["utility"] is None and "no face" in rows["none.png"]["warnings"][0]
    assert rows["bad.png"]["error"] and rows["bad.png"]["utility"] is None and len(rows) == 4
    assert main(["score", str(images / "a.png"), str(images / "none.png"), "--model", str(tiny_ckpt), "--fiqa",
                 str(tiny_fiqa), "--out", str(tmp_path / "both.jsonl")]) == 0
    rows = _rows(tmp_path / "both.jsonl")
    assert rows["a.png"]["quality"] is not None and rows["a.png"]["utility"] == pytest.approx(float(expected[0]),
                                                                                              abs=1e-3)
    assert rows["none.png"]["utility"] is None and rows["none.png"]["quality"] is not None


@pytest.mark.parametrize("args, message", [
    (["score", "x.png"], "--model"),
    (["score", "x.png", "--fiqa", "."], "fiqa_config.json"),
    (["score", "x.png", "--fiqa", "{fiqa}", "--prompt", "a face"], "need an F-Eval model"),
    (["fiqa", "eval", "--data", "missing_dir"], "no such folder"),
    (["fiqa", "eval", "--data", ".", "--fmr", "2"], "--fmr"),
    (["fiqa", "train", "--data", ".", "--out", "o", "--freeze-recognizer"], "--init"),
])
def test_usage_errors_say_what_to_do(args, message, tiny_fiqa, caplog) -> None:
    assert main([a.replace("{fiqa}", str(tiny_fiqa)) for a in args]) == 2
    assert message in caplog.text


def test_make_tiny_fiqa_writes_a_model_that_scores(tmp_path) -> None:
    assert main(["make-tiny", "--fiqa", str(tmp_path / "m")]) == 0
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"fiqa_config.json", "model.safetensors", "face_pack", "samples"} <= names
    res = FIQAScorer.from_pretrained(tmp_path / "m", device="cpu").score(str(tmp_path / "m" / "samples"))
    assert torch.isfinite(res.utility).sum() == 3  # face_a, face_b, reference; no_face is NaN


def test_fiqa_eval_on_identity_folders_and_a_pairs_list(tiny_fiqa, tmp_path, capsys) -> None:
    data = tmp_path / "ids"
    write_identity_set(data, identities=5, per_identity=4, seed=3)
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"image": str(p), "my_fiqa": i})
                                              + "\n" for i, p in enumerate(sorted(data.glob("*/*.png")))))
    pack = ["--face-pack", "tiny_face", "--face-root", str(tiny_fiqa / "face_pack"), "--det-size", "128"]
    assert main(["fiqa", "eval", "--data", str(data), "--model", str(tiny_fiqa), "--quality", str(tmp_path / "q.jsonl"),
                 "--fmr", "0.01", "--out", str(tmp_path / "ev")] + pack) == 0
    out = capsys.readouterr().out
    for method in ("ViT-FIQA utility", "detector confidence", "embedding norm", "random", "my_fiqa"):
        assert method in out
    table = json.loads((tmp_path / "ev" / "fiqa_eval.json").read_text())
    assert table["counts"]["mated"] > 0 and (tmp_path / "ev" / "edc.png").stat().st_size > 1000
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("ids/id_0000/000.png ids/id_0000/001.png 1\nids/id_0000/000.png ids/id_0001/000.png 0\n"
                     "ids/id_0001/000.png ids/id_0001/002.png 1\nids/id_0002/001.png ids/id_0003/000.png 0\n")
    assert main(["fiqa", "eval", "--pairs", str(pairs), "--fmr", "0.4", "--out", str(tmp_path / "ev2"),
                 "--no-plots"] + pack) == 0
    assert json.loads((tmp_path / "ev2" / "fiqa_eval.json").read_text())["counts"]["mated"] == 2


def test_fiqa_import_command(tmp_path, capsys) -> None:
    from feval_core.fiqa.config import FIQAConfig
    from feval_core.fiqa.vit import ViTFIQA
    from feval_core.testing.fiqa import TINY_SHAPES

    torch.save(ViTFIQA(FIQAConfig(**TINY_SHAPES)).vit.state_dict(), tmp_path / "vit_t.pt")
    assert main(["fiqa", "import", str(tmp_path / "vit_t.pt"), "--out", str(tmp_path / "imp"), "--num-heads", "2"]) == 0
    assert "untrained" in capsys.readouterr().err and (tmp_path / "imp" / "model.safetensors").is_file()


# -- reward ----------------------------------------------------------------------------------------------------
def test_utility_weight_in_feval_reward(tiny_fiqa, tiny_scorer) -> None:
    from reward import feval_reward

    batch = torch.from_numpy(np.stack([face_image(0), face_image(1), np.full((128, 128, 3), 20, np.uint8)]))
    batch = batch.permute(0, 3, 1, 2).float() / 255
    fiqa = FIQAScorer.from_pretrained(tiny_fiqa, device="cpu")
    utility = fiqa.score(batch).utility
    only = feval_reward(batch, weights={"utility": 1.0}, fiqa=fiqa, nan_reward=-1.0, return_dict=True)
    assert torch.allclose(only["reward"][:2], utility[:2]) and torch.allclose(only["utility"], utility, equal_nan=True)
    assert only["reward"][2] == 0.0  # no face: the floor, as for every reward (losing the face never pays)
    optional = feval_reward(batch, weights={"utility": 1.0}, fiqa=fiqa, nan_reward=-1.0, faces_required=False)
    assert torch.allclose(optional[:2], utility[:2]) and optional[2] == -1.0  # faces optional: nothing scored
    both = feval_reward(batch, weights={"quality": 1.0, "utility": 3.0}, scorer=tiny_scorer, fiqa=fiqa,
                        return_dict=True, faces_required=False)
    q = both["quality"]
    assert torch.allclose(both["reward"][:2], (q[:2] + 3 * utility[:2]) / 4, atol=1e-5)
    assert both["reward"][2] == pytest.approx(float(q[2]))  # the NaN utility is left out, not counted as 0
    with pytest.raises(ValueError, match="utility weight"):
        feval_reward(batch, weights={"utility": -1.0}, fiqa=fiqa)


# -- ComfyUI ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def comfy(tmp_path_factory: pytest.TempPathFactory, tiny_fiqa: Path) -> SimpleNamespace:
    from tests.comfy_stub import install, load_pack, node_classes

    base = tmp_path_factory.mktemp("ComfyUI")
    install(base)
    shutil.copytree(tiny_fiqa, base / "models" / "feval" / "vit-fiqa")
    return SimpleNamespace(nodes=node_classes(load_pack()))


def test_utility_node_and_thresholds_in_filter_and_pick(comfy, tiny_fiqa) -> None:
    batch = torch.from_numpy(np.stack([face_image(0), face_image(1), face_image(2),
                                       np.full((128, 128, 3), 20, np.uint8)])).float() / 255
    node = comfy.nodes["FEvalFaceUtility"]
    assert "vit-fiqa" in [i for i in node.GET_SCHEMA().inputs if i.id == "fiqa_model"][0].options
    utility, scores, report = node.execute(batch, "vit-fiqa", "cpu").args[:3]
    expected = FIQAScorer.from_pretrained(tiny_fiqa, device="cpu").score(list(to_u8(batch))).utility
    assert np.allclose(utility[:3], expected[:3].numpy()) and math.isnan(utility[3])
    assert "no face" in report
    cut = float(np.median(utility[:3]))
    kept = comfy.nodes["FEvalFilterByScore"].execute(batch, scores, min_utility=cut).args
    assert kept[2] == ",".join(str(i) for i in range(3) if utility[i] >= cut) and "utility n/a" in kept[5]
    best = comfy.nodes["FEvalPickBest"].execute(batch, scores, keep=1, min_utility=100.0).args
    assert best[2] == "" and "utility" in best[3]  # nobody reaches 100: nothing picked, no crash
    with pytest.raises(ValueError, match="Face utility"):
        comfy.nodes["FEvalFilterByScore"].execute(batch, scores.subset([0, 1]).__class__(
            scores.values, scores.dims, scores.faces, scores.notes), min_utility=10.0)
    # chained after "Score faces": the reasons totals use (a failed identity counts 0) pass through unchanged
    reasons = [{"identity": "no face in the image"}, {}, {}, {"identity": "no face in the image"}]
    scored = scores.__class__(scores.values, ("quality", "identity"), scores.faces, scores.notes, missing=reasons)
    chained = node.execute(batch, "vit-fiqa", "cpu", scored).args[1]
    assert chained.missing == reasons and chained.dims == ("quality", "identity")
    assert torch.equal(chained.utility.nan_to_num(-1), scores.utility.nan_to_num(-1))
    with pytest.raises(PermissionError if False else ValueError, match="not a path"):
        node.execute(batch, "../outside", "cpu")


def to_u8(batch: torch.Tensor) -> np.ndarray:
    return (batch * 255).round().to(torch.uint8).numpy()
