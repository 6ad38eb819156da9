"""`feval eval` and `feval bench` on the tiny model trained on the synthetic task; metrics against scipy."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from feval_core import DIMENSIONS, FEvalScorer
from feval_core.data.manifest import read_manifest
from feval_core.errors import ManifestError
from feval_core.evaluate.bench import (
    BOARD_CSV,
    BOARD_MD,
    RADAR_PNG,
    SCORES_NAME,
    collect_bench,
    leaderboard,
    mean_ci,
)
from feval_core.evaluate.metrics import fit_logistic4, logistic4
from feval_core.evaluate.report import Prediction, correlation_rows, format_table

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(learned_run) -> Path:
    return learned_run.out


# -- evaluation ---------------------------------------------------------------------------------------------
def test_feval_eval_prints_and_writes_the_paper_table_and_scatter_plots(trained, learn_task, tmp_path, capsys):
    from feval_core.cli import main

    out = tmp_path / "eval"
    manifest = learn_task.data / "val.jsonl"
    assert main(["eval", "--model", str(trained), "--manifest", str(manifest), "--out", str(out),
                 "--batch-size", "16", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "SRCC" in printed and "PLCC (fit)" in printed and "customization" in printed
    with (out / "eval_table.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [r["dimension"] for r in table] == list(DIMENSIONS)
    assert (out / "eval_table.md").read_text().startswith("| Task | Dimension | N | SRCC |")
    for d in DIMENSIONS:
        assert (out / f"scatter_{d}.png").read_bytes()[:8] == PNG

    # every number in the table is what scipy computes from the written predictions
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    for row in table:
        sel = [p for p in preds if p["dimension"] == row["dimension"] and p["pred"] is not None]
        x, y = np.array([p["pred"] for p in sel]), np.array([p["mos"] for p in sel])
        assert int(row["n"]) == len(sel)
        assert abs(float(row["srcc"]) - stats.spearmanr(x, y)[0]) < 1e-5
        assert abs(float(row["krcc"]) - stats.kendalltau(x, y)[0]) < 1e-5
        assert abs(float(row["plcc"]) - stats.pearsonr(x, y)[0]) < 1e-5
        fitted = logistic4(x, *fit_logistic4(x, y))
        assert abs(float(row["plcc_fit"]) - stats.pearsonr(fitted, y)[0]) < 1e-5
        assert float(row["srcc"]) >= 0.8, "the trained model must rank the held-out images"
    # identity rows whose image shows no face are not scorable: NaN with the reason, left out of the metrics
    missing = [p for p in preds if p["pred"] is None]
    assert missing and all(p["dimension"] == "identity" and "no face" in p["error"] for p in missing)


def test_correlation_rows_per_task_and_overall_agree_with_scipy_to_1e6():
    rng = np.random.default_rng(0)
    preds = []
    for task in ("generation", "customization", "restoration"):
        for dim in ("quality", "authenticity"):
            mos = rng.uniform(0, 100, 40)
            pred = mos + rng.normal(0, 20, 40)
            pred[:3] = np.round(pred[:3])  # a few ties
            preds += [Prediction(f"{task}{i}.png", task, dim, float(m), float(p)) for i, (m, p) in
                      enumerate(zip(mos, pred))]
    preds.append(Prediction("x.png", "generation", "quality", 50.0, math.nan, "unreadable"))
    table = correlation_rows(preds)
    assert [(r["task"], r["dimension"]) for r in table] == [
        (t, d) for t in ("generation", "customization", "restoration", "all") for d in ("quality", "authenticity")]
    for r in table:
        sel = [p for p in preds if p.dim == r["dimension"] and (r["task"] == "all" or p.task == r["task"])
               and math.isfinite(p.pred)]
        x, y = np.array([p.pred for p in sel]), np.array([p.mos for p in sel])
        assert r["n"] == len(sel)
        assert abs(r["srcc"] - stats.spearmanr(x, y)[0]) < 1e-6
        assert abs(r["krcc"] - stats.kendalltau(x, y)[0]) < 1e-6
        assert abs(r["plcc"] - stats.pearsonr(x, y)[0]) < 1e-6
    text = format_table(table)
    assert len(text.splitlines()) == len(table) + 2
    lines = {tuple(line.split()[:2]): line for line in text.splitlines()[2:]}
    assert "Paper F-Eval SRCC/KRCC/PLCC" in text.splitlines()[0]
    assert lines[("generation", "quality")].endswith("0.8486/0.6670/0.9085")  # the paper's row, beside ours
    assert "/" not in lines[("restoration", "quality")], "no paper number: the paper splits restoration in two"
    assert format_table(table, "markdown").count("\n") == len(table) + 1


# -- F-Bench -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench_root(tmp_path_factory) -> Path:
    """Three generators of different quality (noise), prompts in a shared prompts.jsonl, references in refs/."""
    from feval_core.testing.synthetic import make_synthetic_manifest

    root = tmp_path_factory.mktemp("bench")
    gens = {"clean": (0.0, 0.25), "medium": (0.35, 0.6), "noisy": (0.75, 1.0)}
    # the four identities the model was trained on (prepare_synthetic_task): the tiny model has seen no other
    # faces, and unseen ones blur its quality ranking of the clean and medium generators
    manifest = make_synthetic_manifest(root / "src", 36, seed=7, generators=gens, identities=4)
    bench = root / "bench"
    (bench / "refs").mkdir(parents=True)
    lines = []
    for r in read_manifest(manifest):
        (bench / r.model).mkdir(exist_ok=True)
        shutil.copy(r.image, bench / r.model / r.image.name)
        shutil.copy(r.ref, bench / "refs" / (r.image.stem + ".png"))
        lines.append(json.dumps({"image": r.image.stem, "prompt": r.prompt}))
    (bench / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    return bench


def test_feval_bench_ranks_generators_with_intervals_radar_and_resume(trained, bench_root, tmp_path, capsys,
                                                                      monkeypatch):
    from feval_core.cli import main

    out = tmp_path / "bench_out"
    assert main(["bench", str(bench_root), "--model", str(trained), "--out", str(out), "--device", "cpu",
                 "--batch-size", "16"]) == 0
    printed = capsys.readouterr().out
    assert "overall" in printed and "clean" in printed
    assert (out / RADAR_PNG).read_bytes()[:8] == PNG
    assert (out / BOARD_MD).read_text().startswith("| Generator |")
    with (out / BOARD_CSV).open() as fh:
        board = list(csv.DictReader(fh))
    assert {r["generator"] for r in board} == {"clean", "medium", "noisy"}
    assert {r["dimension"] for r in board} == {*DIMENSIONS, "overall"}
    by = {(r["generator"], r["dimension"]): r for r in board}
    for r in board:
        assert float(r["ci_low"]) <= float(r["mean"]) <= float(r["ci_high"])
        assert int(r["n"]) >= 9
    # the trained model sees the noise: the quality leaderboard follows the generators' noise levels
    assert [by[(g, "quality")]["rank"] for g in ("clean", "medium", "noisy")] == ["1", "2", "3"]
    records = [json.loads(line) for line in (out / SCORES_NAME).read_text().splitlines()]
    assert len(records) == 36 and all(r["correspondence"] is not None for r in records)

    def boom(*a, **k):
        raise AssertionError("everything is scored already: the model must not load")

    monkeypatch.setattr(FEvalScorer, "from_pretrained", boom)
    before = (out / SCORES_NAME).read_bytes()
    assert main(["bench", str(bench_root), "--model", str(trained), "--out", str(out)]) == 0
    assert (out / SCORES_NAME).read_bytes() == before


def test_collect_bench_prompt_and_reference_precedence(tmp_path, faces):
    from PIL import Image

    root = tmp_path / "b"
    for gen in ("g1", "g2"):
        (root / gen).mkdir(parents=True)
        for stem in ("001", "002"):
            Image.fromarray(faces["a"]).save(root / gen / f"{stem}.png")
    (root / "empty").mkdir()
    (root / "refs").mkdir()
    Image.fromarray(faces["a_moved"]).save(root / "refs" / "001.png")
    (root / "prompts.txt").write_text("001.png\tshared one\n002\tshared two\n")
    (root / "g1" / "prompts.jsonl").write_text('{"image": "002", "prompt": "own two"}\n')
    (root / "g1" / "001.txt").write_text("sidecar one\n")
    items = {(b.generator, b.path.stem): b for b in collect_bench(root, ref=root / "refs" / "001.png")}
    assert set(items) == {("g1", "001"), ("g1", "002"), ("g2", "001"), ("g2", "002")}
    assert items[("g1", "001")].prompt == "sidecar one"
    assert items[("g1", "002")].prompt == "own two"
    assert items[("g2", "002")].prompt == "shared two"
    assert all(b.ref == root / "refs" / "001.png" for b in items.values())
    assert [b.generator for b in collect_bench(root, generators=["g2"])] == ["g2", "g2"]
    with pytest.raises(ManifestError, match="no generator folder"):
        collect_bench(root, generators=["nope"])
    (root / "g2" / "prompts.txt").write_text("001.png a prompt without a tab\n")
    with pytest.raises(ManifestError, match="TAB"):
        collect_bench(root)


def test_mean_ci_t_matches_scipy_and_bootstrap_is_reproducible():
    x = np.random.default_rng(1).normal(60, 10, 25)
    m, lo, hi = mean_ci(x, method="t")
    ref = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert abs(m - x.mean()) < 1e-9 and abs(lo - ref[0]) < 1e-9 and abs(hi - ref[1]) < 1e-9
    b1, b2 = mean_ci(x, method="bootstrap", seed=3), mean_ci(x, method="bootstrap", seed=3)
    assert b1 == b2 and b1[1] < m < b1[2]
    assert math.isnan(mean_ci([5.0])[1]) and math.isnan(mean_ci([math.nan])[0])


def test_leaderboard_ranks_ties_and_overall():
    recs = [{"generator": g, "image": f"{g}{i}", **dict.fromkeys(DIMENSIONS), "quality": q}
            for g, qs in {"a": [80, 90], "b": [85, 85], "c": [10, 20]}.items() for i, q in enumerate(qs)]
    board = {(e.generator, e.dimension): e for e in leaderboard(recs)}
    assert board[("a", "quality")].rank == board[("b", "quality")].rank == 1
    assert board[("c", "quality")].rank == 3
    assert board[("c", "overall")].mean == 15.0
    assert ("a", "identity") not in board


# -- data commands ------------------------------------------------------------------------------------------
def test_cli_import_faceq_then_split_by_model(tmp_path, faces):
    from PIL import Image

    from feval_core.cli import main

    root = tmp_path / "FaceQ"
    lines = ["image,model,prompt,quality,authenticity"]
    for m, model in enumerate(("SDXL", "Flux", "SD3", "Kolors")):
        (root / "images" / "generation" / model).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(faces["a"]).save(root / "images" / "generation" / model / f"{model}_{i}.png")
            lines.append(f"{model}_{i}.png,{model},a portrait,{10 * m + i},{50 + i}")
    (root / "MOSs").mkdir()
    (root / "MOSs" / "generation.csv").write_text("\n".join(lines) + "\n")
    manifest = tmp_path / "faceq.jsonl"
    assert main(["import-faceq", str(root), "--out", str(manifest)]) == 0
    rows = read_manifest(manifest)
    assert len(rows) == 12 and {r.task for r in rows} == {"generation"}
    assert main(["split", str(manifest), "--out", str(tmp_path / "splits"), "--fractions", "0.5,0.25,0.25",
                 "--by", "model", "--seed", "3"]) == 0
    parts = {n: read_manifest(tmp_path / "splits" / f"{n}.jsonl") for n in ("train", "val", "test")}
    models = {n: {r.model for r in rs} for n, rs in parts.items()}
    assert sum(len(rs) for rs in parts.values()) == 12
    assert not (models["train"] & models["val"] or models["train"] & models["test"] or models["val"] & models["test"])
    assert main(["split", str(manifest), "--out", str(tmp_path / "bad"), "--fractions", "0.5,0.5"]) != 0
