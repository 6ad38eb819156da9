"""Multi-node runs on one machine: two ``accelerate launch`` commands, one per "machine" (``--num_machines 2
--machine_rank R``), meet through torchrun's c10d rendezvous on localhost, exactly as two real machines would
(only the address differs); scoring equals a single-process run and training writes one checkpoint."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from feval_core import FEvalScorer

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def launch_two_machines(command: list[str], cwd: Path, timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """``accelerate launch`` the ``command`` (``-m module args``) as machine 0 and machine 1 of a 2-machine run, one
    process each, through a c10d rendezvous at localhost. Machine 0 starts first (its launcher checks the port is
    free, then hosts the rendezvous store), as on real machines."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    procs = []
    for rank in (0, 1):
        # accelerate's --cpu starts several processes only through mpirun; its torchrun launcher (--multi_gpu)
        # starts them anywhere, and feval joins them with the CPU (gloo) backend when there is no GPU
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
               "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
               "--main_process_port", str(port), "--rdzv_backend", "c10d", "--mixed_precision", "no",
               "--dynamo_backend", "no", *command]
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
        deadline = time.monotonic() + 60
        while rank == 0 and not _port_open(port) and procs[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # the rendezvous store is up: machine 1 may join
    done = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return done


def test_two_machine_score_equals_one_process(tiny_ckpt, faces, tmp_path):
    from feval_core.cli import main

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, key in enumerate(["a", "b", "none", "a_moved", "b"]):
        Image.fromarray(faces[key]).save(folder / f"{i}.png")
    args = ["score", str(folder), "--model", str(tiny_ckpt), "--prompt", "a woman", "--ref", str(folder / "3.png"),
            "--batch-size", "2", "--device", "cpu", "--workers", "0"]
    single = tmp_path / "single.jsonl"
    assert main([*args, "--out", str(single)]) == 0
    sharded = tmp_path / "sharded.jsonl"
    runs = launch_two_machines(["-m", "feval_core.cli", *args, "--out", str(sharded)], tmp_path)
    for r in runs:
        assert r.returncode == 0, r.stderr[-3000:]
    assert "from 2 processes" in runs[0].stderr, "both machines must have joined the run"
    assert sharded.read_text().splitlines() == single.read_text().splitlines()
    assert not list(tmp_path.glob("sharded.jsonl.part*")), "part files are removed after the merge"


def test_two_machine_training_writes_one_loadable_checkpoint(tiny_ckpt, faces, tmp_path):
    from feval_core.testing.synthetic import make_synthetic_manifest
    from feval_core.train.state import STATE_DIR

    make_synthetic_manifest(tmp_path / "data", 8, seed=3, name="train.jsonl")
    out = tmp_path / "run"
    runs = launch_two_machines(
        ["-m", "feval_core.cli", "train", "--manifest", str(tmp_path / "data" / "train.jsonl"), "--base",
         str(tiny_ckpt / "backbone"), "--out", str(out), "--face-pack", "tiny_face", "--face-root",
         str(tiny_ckpt / "face_pack"), "--det-size", "128", "--max-image-pixels", "3136", "--num-face-tokens", "2",
         "--lora-rank", "4", "--lora-alpha", "8", "--batch-size", "4", "--max-steps", "2", "--val-fraction", "0.25",
         "--split-by", "image", "--no-progress", "--no-eval-at-start"], tmp_path)
    for r in runs:
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert sum(r.stderr.count("trained checkpoint:") for r in runs) == 1, "only the main process reports"
    state = json.loads((out / STATE_DIR / "trainer_state.json").read_text())
    assert state["num_processes"] == 2 and state["step"] == 2
    assert (out / STATE_DIR / "rng_1.safetensors").is_file(), "the second machine's process saved its state"
    res = FEvalScorer.from_pretrained(out, device="cpu").score([faces["a"]], prompts="a portrait of Ada")
    assert torch.isfinite(res.scores[:, 0]).all()
