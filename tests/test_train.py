"""`feval train`: targets, data, face cache, gradient paths, resumable state, data-parallel runs, and a
synthetic task on which training must learn (held-out SRCC >= 0.8 per dimension; the untrained model not)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from feval_core import DIMENSIONS, FEvalScorer
from feval_core.data.manifest import ManifestRow, read_manifest
from feval_core.errors import ConfigError, ManifestError
from feval_core.train.config import DEFAULT_SCHEDULE, TRAIN_CONFIG_NAME, TrainConfig
from feval_core.train.data import FACE_CACHE_NAME, FaceCache, expand_rows
from feval_core.train.loop import LOG_NAME, train
from feval_core.train.state import STATE_DIR
from feval_core.train.steps import expert_hooks, level_targets, lr_factor

REPO = Path(__file__).resolve().parents[1]


# -- pure helpers ----------------------------------------------------------------------------------------
def test_level_targets_are_five_equal_bands_best_first():
    mos = torch.tensor([100.0, 80.0, 79.99, 60.0, 50.0, 40.0, 20.0, 19.99, 0.0, 120.0, -5.0])
    assert level_targets(mos).tolist() == [0, 0, 1, 1, 2, 2, 3, 4, 4, 0, 4]


def test_expand_rows_gives_one_example_per_mos_and_uses_lq_as_restoration_reference(tmp_path):
    gen = ManifestRow(image=tmp_path / "a.png", task="generation", prompt="a red disc",
                      mos={"quality": 10.0, "authenticity": 20.0, "correspondence": 30.0})
    rest = ManifestRow(image=tmp_path / "b.png", task="restoration", lq=tmp_path / "b_lq.png",
                       mos={"quality": 40.0, "identity": 50.0})
    ex = expand_rows([gen, rest])
    assert [(e.dim, e.mos) for e in ex] == [("quality", 10.0), ("authenticity", 20.0), ("correspondence", 30.0),
                                            ("quality", 40.0), ("identity", 50.0)]
    assert ex[2].prompt == "a red disc" and ex[0].prompt is None
    assert ex[4].ref == str(tmp_path / "b_lq.png") and ex[3].ref is None
    assert [e.dim for e in expand_rows([gen, rest], ["quality"])] == ["quality", "quality"]
    cust = ManifestRow(image=tmp_path / "c.png", task="customization", lq=tmp_path / "c_lq.png", mos={"identity": 1.0})
    with pytest.raises(ManifestError, match="identity MOS needs a 'ref'"):
        expand_rows([cust])


def test_train_config_validates_and_round_trips(tmp_path):
    cfg = TrainConfig(manifest="m.jsonl", base="b", out=str(tmp_path), dims="quality, id", schedule="joint")
    assert cfg.dims == ("quality", "identity")
    cfg.save(tmp_path)
    assert TrainConfig.load(tmp_path) == cfg
    with pytest.raises(ConfigError, match="schedule must be one of"):
        TrainConfig(manifest="m", base="b", out="o", schedule="three_stage")
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        TrainConfig(manifest="m", base="b", out="o", batch_size=0)
    with pytest.raises(ConfigError, match="copy_base needs a local backbone folder"):
        TrainConfig(manifest="m", base="org/model", out="o", copy_base=True)
    assert TrainConfig(manifest="m", base="b", out="o", schedule="levels").score_mode == "levels"
    for damaged in ("[]", '{"manifest": "m"}', '{"manifest": "m", "base": "b", "out": "o", "lr": "fast"}',
                    '{"manifest": "m", "base": "b", "out": "o", "epochs": 0}', '{"manifest": "m", "extra": 1}'):
        (tmp_path / TRAIN_CONFIG_NAME).write_text(damaged)
        with pytest.raises(ConfigError, match="train_config.json"):
            TrainConfig.load(tmp_path)
    assert TrainConfig(manifest="m", base="b", out="o", schedule="two_stage").stages == ("levels", "regression")


def test_lr_schedule_warms_up_and_restarts_per_stage():
    cfg = TrainConfig(manifest="m", base="b", out="o", warmup_ratio=0.1, lr_schedule="cosine")
    bounds = [50, 100]
    f = [lr_factor(s, bounds, cfg) for s in range(100)]
    assert f[0] < f[4] <= 1.0 and abs(f[5] - 1.0) < 1e-9  # 5 warm-up steps per stage
    assert f[49] < 0.01 and f[50] < f[54] and abs(f[55] - 1.0) < 1e-9  # stage 2 restarts
    assert all(0.0 <= v <= 1.0 for v in f)


class _CountingEncoder:
    def __init__(self, faces):
        self.calls = 0
        self.faces = faces

    def analyze(self, img):
        from feval_core.faces.encoder import FaceInfo

        self.calls += 1
        return FaceInfo(num_faces=1, embedding=np.full(512, float(np.asarray(img).mean()), np.float32))


def test_face_cache_embeds_each_image_once_and_again_when_it_changes(tmp_path, faces):
    from PIL import Image

    paths = []
    for name in ("a", "b"):
        p = tmp_path / f"{name}.png"
        Image.fromarray(faces[name]).save(p)
        paths.append(str(p))
    enc = _CountingEncoder(faces)
    cache = FaceCache(tmp_path / FACE_CACHE_NAME)
    assert cache.fill(paths + paths, enc, progress=False) == 2 and enc.calls == 2
    cache.save()
    again = FaceCache(tmp_path / FACE_CACHE_NAME)
    assert again.fill(paths, enc, progress=False) == 0 and enc.calls == 2
    np.testing.assert_array_equal(again.get(paths[0]), cache.get(paths[0]))
    Image.fromarray(faces["none"]).save(paths[1])  # edited image: new size/mtime -> embedded again
    os.utime(paths[1], ns=(1, 1))
    assert again.fill(paths, enc, progress=False) == 1 and enc.calls == 3


# -- gradient paths ----------------------------------------------------------------------------------------
def _grads(model, batch, mos, gc_hooks: bool):
    from feval_core.train.steps import TrainStep

    for _, p in model.trainable_parameters():
        p.grad = None
    with expert_hooks(model.backbone, batch.dims if gc_hooks else None):
        out = TrainStep(model)(batch, mos, ["q"] * len(mos), {"levels": 1.0, "regression": 1.0, "router": 0.1},
                               by_expert=False)  # PEFT's per-row experts, as training with checkpointing uses
        out["loss"].backward()
    return {n: p.grad.detach().clone() for n, p in model.trainable_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients_and_reaches_the_face_projector(tiny_ckpt, faces):
    """Checkpointing re-runs layers in backward; without the expert hooks that re-run mixes every row through
    one expert and gives silently wrong gradients."""
    from PIL import Image

    from feval_core.model.config import FEvalConfig
    from feval_core.model.lmm import FEvalModel
    from feval_core.model.rows import Row
    from feval_core.train.data import TrainBatch
    from feval_core.train.steps import enable_gradient_checkpointing

    cfg = FEvalConfig.load(tiny_ckpt)
    torch.manual_seed(0)
    model = FEvalModel.build(cfg, base_dir=tiny_ckpt, random_adapters=True)
    img = Image.fromarray(faces["a"])
    emb = np.random.default_rng(0).standard_normal(512).astype(np.float32)
    rows = [Row(img, d, prompt="a woman", ref=img, face=emb, ref_face=emb) for d in DIMENSIONS]
    batch = TrainBatch(rows, [model.prepare_image(im) for im in TrainBatch.images(rows)])  # as the Collator does
    mos = torch.tensor([90.0, 10.0, 55.0, 30.0])
    plain = _grads(model, batch, mos, gc_hooks=False)
    assert plain["heads.face_projector.net.0.weight"].abs().sum() > 0, "no gradient reaches the facial projector"
    assert any("lora_A" in n and g.abs().sum() > 0 for n, g in plain.items())
    enable_gradient_checkpointing(model)
    assert not model.backbone.training, "the backbone must stay in eval mode (PEFT refuses per-row experts)"
    checkpointed = _grads(model, batch, mos, gc_hooks=True)
    assert plain.keys() == checkpointed.keys()
    for n in plain:
        torch.testing.assert_close(checkpointed[n], plain[n], atol=1e-5, rtol=1e-4, msg=n)
    # the hazard the hooks prevent: the recomputation routes every row through one expert
    try:
        unhooked = _grads(model, batch, mos, gc_hooks=False)
    except torch.utils.checkpoint.CheckpointError:
        return
    assert any(not torch.allclose(unhooked[n], plain[n], atol=1e-5) for n in plain if "lora" in n)


def test_optimizer_state_round_trips_through_safetensors(tmp_path):
    from feval_core.train.state import load_optimizer, save_optimizer

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5))]
    opt = torch.optim.AdamW([{"params": params[:1], "lr": 1e-2}, {"params": params[1:], "lr": 1e-3}])
    for _ in range(3):
        (params[0].sum() ** 2 + params[1].pow(3).sum()).backward()
        opt.step()
        opt.zero_grad()
    save_optimizer(opt, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optimizer.safetensors"]
    opt2 = torch.optim.AdamW([{"params": params[:1], "lr": 5.0}, {"params": params[1:], "lr": 5.0}])
    load_optimizer(opt2, tmp_path)
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for k in a["state"]:
        for name, v in a["state"][k].items():
            torch.testing.assert_close(b["state"][k][name], v)


# -- the learning test -------------------------------------------------------------------------------------
def test_training_learns_the_synthetic_task(learned_run, learn_task):
    """Each dimension's MOS is a known function of visible content (feval_core.testing.synthetic); a tiny model trained
    on CPU for a couple of minutes ranks held-out images with SRCC >= 0.8 on every dimension, the untrained
    model does not, and the saved checkpoint scores them the same way through FEvalScorer."""
    from feval_core.evaluate.report import evaluate

    run = learned_run
    assert run.finished and (run.out / "feval_config.json").is_file()
    before = next(h for h in run.history if h.get("step") == 0 and "val" in h)["val"]
    after = run.val
    print(f"\nsynthetic task, {run.steps} steps in {run.seconds:.0f} s; held-out SRCC before -> after: "
          + ", ".join(f"{d} {before[d]['srcc']:.3f} -> {after[d]['srcc']:.3f}" for d in DIMENSIONS))
    for d in DIMENSIONS:
        assert abs(before[d]["srcc"]) < 0.5, f"untrained {d} already ranks well: {before[d]}"
        assert after[d]["srcc"] >= 0.8, f"trained {d} SRCC {after[d]['srcc']:.3f} < 0.8"
    log = [json.loads(line) for line in (run.out / LOG_NAME).read_text().splitlines()]
    assert any("loss" in r for r in log) and any("val" in r for r in log)
    assert json.loads((run.out / TRAIN_CONFIG_NAME).read_text())["schedule"] == DEFAULT_SCHEDULE

    scorer = FEvalScorer.from_pretrained(run.out, device="cpu")
    assert scorer.config.score_mode == TrainConfig(manifest="m", base="b", out="o").score_mode
    assert scorer.model.trained
    report = evaluate(scorer, read_manifest(learn_task.data / "val.jsonl"), batch_size=16, progress=False)
    for d in DIMENSIONS:
        srcc = report.row("customization", d)["srcc"]
        assert abs(srcc - after[d]["srcc"]) < 0.02, f"{d}: scorer SRCC {srcc:.4f} != training-time {after[d]}"


# -- resumable state, data-parallel runs, the command line ---------------------------------------------------
@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    from feval_core.testing.synthetic import make_synthetic_manifest

    root = tmp_path_factory.mktemp("small")
    make_synthetic_manifest(root, 12, seed=3, name="train.jsonl")
    make_synthetic_manifest(root, 8, seed=4, name="val.jsonl")
    return root


def _small_config(small_data: Path, tiny_ckpt: Path, out: Path, **kw) -> TrainConfig:
    args = dict(manifest=str(small_data / "train.jsonl"), val_manifest=str(small_data / "val.jsonl"),
                base=str(tiny_ckpt / "backbone"), out=str(out), face_pack="tiny_face",
                face_root=str(tiny_ckpt / "face_pack"), det_size=128, max_image_pixels=56 * 56, num_face_tokens=2,
                lora_rank=4, lora_alpha=8, batch_size=8, grad_accum=2, max_steps=7, save_every=2, lr=1e-3,
                progress=False, eval_at_start=False, schedule="two_stage")
    args.update(kw)
    return TrainConfig(**args)


def _trainable(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / STATE_DIR / "trainable.safetensors"))


def test_an_interrupted_run_resumes_to_the_same_result(small_data, tiny_ckpt, tmp_path):
    """7 optimizer steps of 2 micro-batches over ~6 micro-batches per epoch cross two epoch boundaries and the
    stage switch; stopping after 4 steps (mid-epoch) and resuming must end where the uninterrupted run ends."""
    whole = train(_small_config(small_data, tiny_ckpt, tmp_path / "whole"))
    assert whole.finished and whole.steps == 7
    part = train(_small_config(small_data, tiny_ckpt, tmp_path / "split", stop_after=4))
    assert not part.finished and part.steps == 4
    assert not (tmp_path / "split" / "feval_config.json").exists(), "no checkpoint before the run is finished"
    state = json.loads((tmp_path / "split" / STATE_DIR / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["micro_in_epoch"] > 0, state
    with pytest.raises(ConfigError, match="pass --resume"):
        train(_small_config(small_data, tiny_ckpt, tmp_path / "split"))
    with pytest.raises(ConfigError, match="lr 0.001 -> 0.002"):
        train(_small_config(small_data, tiny_ckpt, tmp_path / "split", resume=True, lr=2e-3))
    resumed = train(_small_config(small_data, tiny_ckpt, tmp_path / "split", resume=True))
    assert resumed.finished and resumed.steps == 7
    a, b = _trainable(tmp_path / "whole"), _trainable(tmp_path / "split")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4, msg=name)
    for d in whole.val:
        assert abs(whole.val[d]["srcc"] - resumed.val[d]["srcc"]) < 1e-6
        assert abs(whole.val[d]["plcc"] - resumed.val[d]["plcc"]) < 1e-4
    files = {p.suffix for p in (tmp_path / "split").rglob("*") if p.is_file()}
    assert files <= {".json", ".jsonl", ".safetensors", ".md"}, f"only safetensors/JSON are written: {files}"
    scorer = FEvalScorer.from_pretrained(tmp_path / "split", device="cpu")  # refuses pickles: none were written
    assert scorer.config.score_mode == "regression"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_accelerate_launch_two_cpu_processes_trains_a_loadable_checkpoint(small_data, tiny_ckpt, tmp_path, faces):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    # accelerate's --cpu starts several processes only through mpirun; its torchrun launcher (--multi_gpu)
    # starts them anywhere, and train() joins them with the CPU (gloo) backend when there is no GPU
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "feval_core.cli", "train",
           "--manifest", str(small_data / "train.jsonl"), "--val-manifest", str(small_data / "val.jsonl"),
           "--base", str(tiny_ckpt / "backbone"), "--out", str(out), "--face-pack", "tiny_face",
           "--face-root", str(tiny_ckpt / "face_pack"), "--det-size", "128", "--max-image-pixels", "3136",
           "--num-face-tokens", "2", "--lora-rank", "4", "--lora-alpha", "8", "--batch-size", "4", "--max-steps", "3",
           "--no-progress", "--no-eval-at-start"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr.count("trained checkpoint:") == 1, "only the main process reports"
    state = json.loads((out / STATE_DIR / "trainer_state.json").read_text())
    assert state["num_processes"] == 2 and state["step"] == 3
    assert (out / STATE_DIR / "rng_1.safetensors").is_file()
    scorer = FEvalScorer.from_pretrained(out, device="cpu")
    res = scorer.score([faces["a"]], prompts="a portrait of Ada", refs=faces["a_moved"])
    assert torch.isfinite(res.scores).all()


def test_cli_train_writes_log_and_checkpoint_and_bf16_runs(small_data, tiny_ckpt, tmp_path, faces):
    from feval_core.cli import main

    out = tmp_path / "cli"
    code = main(["train", "--manifest", str(small_data / "train.jsonl"), "--base", str(tiny_ckpt / "backbone"),
                 "--out", str(out), "--face-pack", "tiny_face", "--face-root", str(tiny_ckpt / "face_pack"),
                 "--det-size", "128", "--max-image-pixels", "3136", "--num-face-tokens", "2", "--lora-rank", "4",
                 "--lora-alpha", "8", "--batch-size", "8", "--max-steps", "2", "--val-fraction", "0.25",
                 "--split-by", "image", "--schedule", "levels", "--precision", "bf16", "--gradient-checkpointing",
                 "--dims", "quality,correspondence", "--copy-base", "--copy-face-pack", "--no-progress"])
    assert code == 0
    log = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses and all(math.isfinite(v) for v in losses)
    assert [r["step"] for r in log if "val" in r][0] == 0
    assert (out / "splits" / "train.jsonl").is_file() and (out / "splits" / "val.jsonl").is_file()
    assert (out / FACE_CACHE_NAME).is_file()
    cfg = json.loads((out / "feval_config.json").read_text())
    assert cfg["score_mode"] == "levels" and cfg["dims"] == ["quality", "correspondence"]
    assert cfg["base_model"] == "backbone" and cfg["face"]["root"] == "face_pack", "--copy-* make it self-contained"
    scorer = FEvalScorer.from_pretrained(out, device="cpu")
    res = scorer.score([faces["a"]], prompts="a portrait of Ada")
    assert torch.isfinite(res.scores[0, [0, 3]]).all() and torch.isnan(res.scores[0, [1, 2]]).all()


def test_unreadable_images_are_left_out_with_a_record_and_training_goes_on(small_data, tiny_ckpt, tmp_path):
    """A file that exists but does not decode (a truncated download) costs its own rows, not the run; a missing
    file is refused when the manifest is read, naming its line (tests/test_manifest.py)."""
    from feval_core.train.data import SKIPPED_NAME

    rows = [json.loads(line) for line in (small_data / "train.jsonl").read_text().splitlines()]
    for r in rows:  # the manifest's paths are relative to its folder
        for k in ("image", "ref"):
            if r.get(k):
                r[k] = str(small_data / r[k])
    broken, broken_ref = tmp_path / "broken.png", tmp_path / "broken_ref.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    broken_ref.write_bytes(b"GIF89a")
    bad = [dict(rows[0], image=str(broken)), dict(rows[1], ref=str(broken_ref))]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows + bad))
    res = train(_small_config(small_data, tiny_ckpt, tmp_path / "run", manifest=str(manifest), max_steps=2))
    assert res.finished
    skipped = [json.loads(line) for line in (tmp_path / "run" / SKIPPED_NAME).read_text().splitlines()]
    assert {Path(s["image"]).name for s in skipped} == {"broken.png", "broken_ref.png"}
    assert all(s["error"] for s in skipped)
    assert FEvalScorer.from_pretrained(tmp_path / "run", device="cpu").model.trained


@pytest.mark.parametrize("text", ["{not json", '{"step": "4"}', "[]", '{"step": 1, "epoch": 0, "micro_in_epoch": -1, '
                                  '"micro_steps": 2, "num_processes": 1}'])
def test_a_damaged_trainer_state_is_refused_with_the_fix(tmp_path, text):
    from feval_core.train.state import STATE_FILE, TrainerState

    (tmp_path / STATE_FILE).write_text(text)
    with pytest.raises(ConfigError, match="start the run over"):
        TrainerState.load(tmp_path)
    TrainerState(3, 1, 2, 6, 2, {"python": [3, [1], None]}).save(tmp_path)
    assert TrainerState.load(tmp_path) == TrainerState(3, 1, 2, 6, 2, {"python": [3, [1], None]})
