"""ViT-FIQA training: resumes to the same result, runs as 2 CPU processes under accelerate launch, and leaves
out unreadable or faceless images with a record while training on the rest."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from feval_core.errors import ConfigError
from feval_core.fiqa.scorer import FIQAScorer
from feval_core.fiqa.train import FACES_NAME, SKIPPED_NAME, train_fiqa
from feval_core.fiqa.train_config import FIQATrainConfig
from feval_core.testing.fiqa import TINY_SHAPES, write_identity_set
from tests.conftest import face_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def id_data(tmp_path_factory: pytest.TempPathFactory, tiny_fiqa: Path) -> Path:
    root = tmp_path_factory.mktemp("ids")
    write_identity_set(root, identities=6, per_identity=6, seed=0)
    (root / "id_0000" / "broken.png").write_bytes(b"not an image")
    from PIL import Image

    Image.new("RGB", (96, 96), (20, 20, 20)).save(root / "id_0001" / "blank.png")
    return root


def _cfg(data: Path, pack: Path, out: Path, **kw) -> FIQATrainConfig:
    base = dict(data=str(data), out=str(out), embed_dim=TINY_SHAPES["embed_dim"], depth=TINY_SHAPES["depth"],
                num_heads=TINY_SHAPES["num_heads"], num_features=TINY_SHAPES["num_features"], face_pack="tiny_face",
                face_root=str(pack), det_size=128, batch_size=8, max_steps=7, save_every=2, log_every=1,
                scale=16.0, progress=False)
    return FIQATrainConfig(**{**base, **kw})


def test_an_interrupted_run_resumes_to_the_same_result_and_bad_images_are_left_out(id_data, tiny_fiqa, tmp_path):
    pack = tiny_fiqa / "face_pack"
    whole = train_fiqa(_cfg(id_data, pack, tmp_path / "whole"))
    assert whole.finished and whole.steps == 7
    skipped = [json.loads(line) for line in (tmp_path / "whole" / SKIPPED_NAME).read_text().splitlines()]
    reasons = {Path(s["image"]).name: s["error"] for s in skipped}
    assert "no face" in reasons["blank.png"] and "not an image" in reasons["broken.png"]
    part = train_fiqa(_cfg(id_data, pack, tmp_path / "split", stop_after=3))
    assert not part.finished and part.steps == 3 and not (tmp_path / "split" / "model.safetensors").exists()
    with pytest.raises(ConfigError, match="--resume"):
        train_fiqa(_cfg(id_data, pack, tmp_path / "split"))
    with pytest.raises(ConfigError, match="lr 0.001 -> 0.002"):
        train_fiqa(_cfg(id_data, pack, tmp_path / "split", resume=True, lr=2e-3))
    resumed = train_fiqa(_cfg(id_data, pack, tmp_path / "split", resume=True))
    assert resumed.finished and resumed.steps == 7
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4, msg=name)
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in whole.history[3:]], rel=1e-4)
    files = {p.suffix for p in (tmp_path / "split").rglob("*") if p.is_file()}
    assert files <= {".json", ".jsonl", ".safetensors"}, f"only safetensors/JSON are written: {files}"
    scorer = FIQAScorer.from_pretrained(tmp_path / "split", device="cpu")
    assert scorer.config.utility_quantiles is not None and len(scorer.config.utility_quantiles) == 101
    u = scorer.score([face_image(0), face_image(1)]).utility
    assert torch.isfinite(u).all() and ((u >= 0) & (u <= 100)).all()


def test_frozen_recognizer_trains_only_the_quality_side(id_data, tiny_fiqa, tmp_path):
    out = train_fiqa(_cfg(id_data, tiny_fiqa / "face_pack", tmp_path / "frozen", init=str(tiny_fiqa),
                          freeze_recognizer=True, max_steps=2)).out
    before, after = load_file(str(tiny_fiqa / "model.safetensors")), load_file(str(out / "model.safetensors"))
    vit = [k for k in before if k.startswith("vit.")]
    assert vit and all(torch.equal(before[k], after[k]) for k in vit), "the recognizer (and its BN stats) stays"
    assert not torch.equal(before["quality_token"], after["quality_token"])
    with pytest.raises(ConfigError, match="--init"):
        FIQATrainConfig(data="d", out="o", freeze_recognizer=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_accelerate_launch_two_cpu_processes_train_a_loadable_model(id_data, tiny_fiqa, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "feval_core.cli", "fiqa", "train",
           "--data", str(id_data), "--out", str(out), "--embed-dim", "32", "--depth", "2", "--num-heads", "2",
           "--num-features", "64", "--face-pack", "tiny_face", "--face-root", str(tiny_fiqa / "face_pack"),
           "--det-size", "128", "--batch-size", "4", "--max-steps", "3", "--no-progress"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr.count("trained ViT-FIQA:") == 1, "only the main process reports"
    state = json.loads((out / "state" / "trainer_state.json").read_text())
    assert state["num_processes"] == 2 and state["step"] == 3
    assert (out / "state" / "rng_1.safetensors").is_file() and (out / FACES_NAME).is_file()
    u = FIQAScorer.from_pretrained(out, device="cpu").score([face_image(2)]).utility
    assert torch.isfinite(u).all()
