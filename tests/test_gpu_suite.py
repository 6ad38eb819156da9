"""The one GPU command runs end to end on the CPU (``--dry-run``), renders into README's table, and keeps to its
time budget; backbones built on the meta device get transformers' initialisation on the target device."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from feval_core import DIMENSIONS

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _script(name: str):
    """A fresh copy of a benchmarks/ script as a module (gpu_suite's budget counts from its import)."""
    spec = importlib.util.spec_from_file_location(f"feval_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite") / "gpu-suite.json"
    # a generous budget: every step must run here (the budget's own behaviour is tested below)
    assert _script("gpu_suite").main(["--dry-run", "--budget-s", "900", "--json", str(out)]) == 0
    return out, json.loads(out.read_text())


def test_dry_run_measures_every_step_and_writes_one_json(dry_run, capsys):
    _, data = dry_run
    meta, rows = data["meta"], data["results"]
    assert meta["suite"] == "gpu_suite" and meta["dry_run"] and meta["complete"] and not meta["skipped"]
    assert meta["peak_flops"] > 0 and meta["elapsed_s"] < meta["budget_s"]
    assert {(r["image_px"], r["batch"]) for r in rows} == {(112, 1), (112, 2), (140, 1), (140, 2)}
    for r in rows:
        assert r["img_per_s"] > 0 and 0 < r["mfu"] < 1 and r["peak_mem_gib"] > 0 and 0 <= r["cpu_wait"] <= 1
        assert r["ratio_to_naive"] > 0 and r["prep_img_per_s"] > 0
        assert r["param_count_fit"] == pytest.approx(1.0, abs=0.01), "the FLOP formula must match the model"
        assert r["vision_runs"] < r["images"] * len(DIMENSIONS), "vision must be shared across dimensions"
    (abl,) = meta["ablations"]
    assert set(abl["img_per_s"]) == {"fast path", "no vision sharing", "no length buckets", "no prefetch threads",
                                     "experts by PEFT row indexing", "vision attention per window"}
    assert {n["image_px"] for n in meta["naive"]} == {112, 140}
    reward = data["sections"]["differentiable_reward"]
    assert reward["vision_runs"]["vision once per image"] < reward["vision_runs"]["vision once per row"]
    assert reward["ratio"] > 0 and math.isfinite(reward["ratio"])
    det = data["sections"]["detect_workers"]
    two = det["results"]["2 workers, 2 sessions x 1 thread (default)"]
    assert two["sessions"] == 2 and two["faces"] == det["images"] and det["ratio"] > 0
    fiqa = data["sections"]["fiqa"]
    assert fiqa["status"] == "measured" and [r["batch"] for r in fiqa["rows"]][:1] == [4]
    assert all(r["crops_per_s"] > 0 for r in fiqa["rows"])
    video = data["sections"]["video"]
    assert video["status"] == "measured" and [r["batch"] for r in video["rows"]] == [1, 2]
    for r in video["rows"]:
        assert r["clips"] == 4 and r["clips_per_s"] > 0 and r["frames_per_s"] == pytest.approx(
            16 * r["clips_per_s"], rel=0.01) and r["peak_gib"] > 0 and 0 <= r["cpu_wait"] <= 1
    assert "| small Qwen2.5-VL-class (CPU) | 2 | 112 |" in data["table"]


def test_dry_run_json_renders_into_the_readme_table(dry_run, tmp_path, capsys):
    out, data = dry_run
    render = _script("readme_table")
    readme = tmp_path / "README.md"
    original = (ROOT / "README.md").read_text()
    assert render.BEGIN in original and render.END in original, "README's table needs the gpu-suite markers"
    readme.write_text(original)
    assert render.main([str(out), "--readme", str(readme)]) == 2, "a dry run must not fill README's GPU table"
    assert "--dry-run" in capsys.readouterr().err
    assert render.main([str(out), "--readme", str(readme), "--allow-dry-run"]) == 0
    text = readme.read_text()
    block = text[text.index(render.BEGIN):text.index(render.END)]
    for r in data["results"]:
        assert f"| {r['backbone']} | {r['batch']} | {r['image_px']} | {r['img_per_s']:.2f} |" in block
    assert data["meta"]["device_name"] in block and data["meta"]["date"][:10] in block
    assert "Differentiable reward" in block and "2 workers" in block
    for r in data["sections"]["video"]["rows"]:  # the video section's rows, as rows of their own table
        row = f"| tiny video checkpoint (dry run) | {r['batch']} | {r['clips_per_s']} | {r['frames_per_s']} |"
        assert "\n" + row in block
    assert text.replace(block, "") == original.replace(original[original.index(render.BEGIN):
                                                               original.index(render.END)], ""), \
        "only the block between the markers changes"


def test_a_short_budget_skips_steps_and_still_writes_a_complete_file(tmp_path, capsys):
    out = tmp_path / "short.json"
    suite = _script("gpu_suite")
    assert suite.main(["--dry-run", "--budget-s", "0.001", "--json", str(out), "--no-detect", "--extras"]) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["complete"] and data["results"] == []
    skipped = [s["step"] for s in data["meta"]["skipped"]]
    assert any("112 px batch 1" in s for s in skipped) and "differentiable reward" in skipped
    assert "Skipped (budget)" in capsys.readouterr().out
    block = _script("readme_table").render(data)
    assert "no measurement finished" in block and "Not measured (time budget): differentiable reward" in block


def test_meta_device_build_gets_transformers_initialisation():
    from transformers import Qwen2_5_VLForConditionalGeneration

    from benchmarks.speed.backbones import SPECS, backbone_config, build_backbone
    from feval_core.testing.tiny import build_tokenizer

    config = backbone_config(SPECS["small"], build_tokenizer("qwen2_5_vl"))
    built = build_backbone(config, device="cpu", dtype=torch.float32, attn="sdpa")
    torch.manual_seed(0)
    plain = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    for name, buf in plain.named_buffers():
        torch.testing.assert_close(dict(built.named_buffers())[name], buf, msg=name)  # rotary frequencies
    params = {name: q.detach() for name, q in built.named_parameters()}
    assert all(torch.isfinite(p).all() for p in params.values())
    for name, p in plain.named_parameters():
        q, p = params[name], p.detach()
        assert q.device.type == "cpu" and abs(float(q.std()) - float(p.std())) < 0.01, name
        assert abs(float(q.mean()) - float(p.mean())) < 0.01, name
