"""Video training at scale: data parallel under ``accelerate launch`` (two CPU processes, stopped and resumed) ends
where one process with the same global batch ends; clip features are read from disk per batch, never all held.

One tiny video checkpoint and ten 8-frame mp4 clips are built once; every run is six optimizer steps on CPU.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from feval_core.cli import main  # noqa: E402
from feval_core.testing.video import make_tiny_video_checkpoint, synthetic_video_set, write_clip  # noqa: E402
from feval_core.video.cache import CACHE_DIR  # noqa: E402
from feval_core.video.loop import local_part  # noqa: E402
from feval_core.video.store import SCRATCH_DIR  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ["train"] * 7 + ["val"] * 3  # batches of 3, 3, 1: over two processes 2 + 1, and 1 + none (weight 0)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_video_checkpoint(tmp_path_factory.mktemp("vckpt") / "tiny", seed=0, samples=False)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    lines = []
    for i, (frames, mos, _) in enumerate(synthetic_video_set(len(SPLITS), seed=7, n=8, size=64)):
        write_clip(folder / f"c{i:02d}.mp4", frames)
        lines.append(json.dumps({"video": f"c{i:02d}.mp4", "mos": float(mos), "split": SPLITS[i]}) + "\n")
    (folder / "videos.jsonl").write_text("".join(lines))
    return folder / "videos.jsonl"


def _args(ckpt: Path, manifest: Path, out: Path, *extra: str) -> list[str]:
    return ["video", "train", "--manifest", str(manifest), "--out", str(out), "--base", str(ckpt / "backbone"),
            "--temporal-model", str(ckpt / "temporal"), "--branches", "spatial,temporal", "--num-key-frames", "2",
            "--num-clip-frames", "8", "--temporal-tokens", "2", "--frame-side", "64", "--max-image-pixels", "3136",
            "--lora-rank", "4", "--lora-alpha", "8", "--epochs", "2", "--batch-size", "3", "--lr", "1e-2",
            "--schedule", "two_stage", *extra]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch_two(args: list[str], cwd: Path) -> dict:
    """``accelerate launch`` two CPU processes of ``feval video train``; the one summary line they print."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    # accelerate's --cpu starts several processes only through mpirun; its torchrun launcher (--multi_gpu)
    # starts them anywhere, and the trainer joins them with the CPU (gloo) backend when there is no GPU
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "feval_core.cli", *args]
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 1, f"one summary, from the main process: {proc.stdout[-2000:]}"
    return lines[0]


def _trainable(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "state" / "trainable.safetensors"))


def test_local_parts_weight_to_the_batch_mean() -> None:
    """Each process's clips of a global batch and the weight of its mean loss: the weighted means average (over
    processes, as DDP averages gradients) to the whole batch's mean; an empty part is one clip at weight 0."""
    losses = np.array([0.3, 1.7, 0.2, 0.9, 2.5])
    batch = [4, 0, 2, 1, 3]
    for n in (1, 2, 3, 7):
        parts = [local_part(batch, r, n) for r in range(n)]
        assert sorted(i for idx, w in parts if w > 0 for i in idx) == sorted(batch)  # every clip once
        mean = sum(w * losses[idx].mean() for idx, w in parts) / n
        assert mean == pytest.approx(losses[batch].mean(), rel=1e-12)
    assert local_part([5, 6], 2, 3) == ([5], 0.0)


def test_two_processes_stopped_and_resumed_match_one_process(ckpt, manifest, tmp_path, capsys) -> None:
    """Two CPU processes under ``accelerate launch`` (each extracting its half of the clips into the shared feature
    cache), stopped after 3 of 6 steps and resumed under two processes: the same losses, trainable weights and
    held-out scores as one process with the same global batch; one state and checkpoint, written by the main
    process; the checkpoint loads and scores."""
    from feval_core.video.scorer import VideoScorer

    one = tmp_path / "one"
    assert main(_args(ckpt, manifest, one)) == 0
    ref = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ref["finished"] and ref["steps"] == 6 and ref["processes"] == 1

    two = tmp_path / "two"
    first = _launch_two(_args(ckpt, manifest, two, "--stop-after", "3"), tmp_path)
    assert first["processes"] == 2 and first["steps"] == 3 and first["finished"] is False
    assert first["feature_cache"] == {"hits": 0, "stored": 10}  # each clip extracted once, by one of the two
    state = json.loads((two / "state" / "trainer_state.json").read_text())
    assert state["num_processes"] == 2 and state["step"] == 3 and (two / "state" / "rng_1.safetensors").is_file()
    done = _launch_two(_args(ckpt, manifest, two, "--resume"), tmp_path)
    assert done["finished"] and done["steps"] == 6 and done["feature_cache"] == {"hits": 10, "stored": 0}
    assert not (two / SCRATCH_DIR).exists() and len(list((two / CACHE_DIR).glob("*.safetensors"))) == 10

    log_one = [json.loads(x) for x in (one / "train_log.jsonl").read_text().splitlines()]
    log_two = [json.loads(x) for x in (two / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_two] == list(range(6)), "one log line per step, from the main process"
    assert [r["clips"] for r in log_two] == [3, 3, 1] * 2  # each epoch sees the 7 training clips
    np.testing.assert_allclose([r["loss"] for r in log_two], [r["loss"] for r in log_one], rtol=1e-3, atol=1e-5)
    a, b = _trainable(one), _trainable(two)
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=2e-4, rtol=1e-3, msg=name)
    assert done["val"]["n"] == 3 and done["val"]["srcc"] == pytest.approx(ref["val"]["srcc"], abs=1e-6)

    val = [str(manifest.parent / f"c{i:02d}.mp4") for i, s in enumerate(SPLITS) if s == "val"]
    rows_two = VideoScorer.from_pretrained(two).score(val)
    rows_one = VideoScorer.from_pretrained(one).score(val)
    assert all(r["error"] is None and np.isfinite(r["video_quality"]) for r in rows_two)
    np.testing.assert_allclose([r["video_quality"] for r in rows_two], [r["video_quality"] for r in rows_one],
                               atol=0.05)


def test_training_holds_a_few_batches_of_features_not_every_clip(ckpt, tmp_path, monkeypatch) -> None:
    """Arrays through the API (no path: written to a temporary folder, deleted after the run): at every step only
    the batches being trained on and read ahead are alive, not the features of all 16 clips."""
    import gc
    import tempfile

    import feval_core.video.loop as loop
    from feval_core.video.model import VideoFeatures
    from feval_core.video.sources import VideoSource
    from feval_core.video.store import LOAD_AHEAD
    from feval_core.video.train import VideoTrainConfig, train_video

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    data = synthetic_video_set(16, seed=3, n=8, size=64)
    pairs = [(VideoSource("array", f, f"<{i}>", 8.0), m) for i, (f, m, _) in enumerate(data)]
    cfg = VideoTrainConfig(base=str(ckpt / "backbone"), temporal_model=str(ckpt / "temporal"),
                           branches=("spatial", "temporal"), num_key_frames=2, num_clip_frames=8, temporal_tokens=2,
                           frame_side=64, max_image_pixels=56 * 56, lora_rank=4, lora_alpha=8, epochs=1, batch_size=2)
    alive: list[int] = []
    real_step = loop._step

    def counting(*args, **kwargs):
        gc.collect()
        alive.append(sum(isinstance(o, VideoFeatures) for o in gc.get_objects()))
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "_step", counting)
    res = train_video(cfg, pairs)
    assert res.finished and res.steps == 8 and len(alive) == 8
    assert max(alive) <= (LOAD_AHEAD + 1) * cfg.batch_size < len(pairs), alive
    assert list(tmp_path.glob("feval-video-features-*")) == [], "the temporary feature folder is removed"


def test_store_keeps_whole_cache_entries_and_recomputes_a_damaged_one(ckpt, manifest, tmp_path) -> None:
    """A second fill of the same clips reads nothing but headers (hits); an entry cut short (a full disk, a copy
    stopped half way) is computed again; an unreadable clip is an error for that clip only."""
    from feval_core.video.cache import FeatureCache, read_features
    from feval_core.video.checkpoint import load_encoders
    from feval_core.video.features import FeatureExtractor
    from feval_core.video.sources import VideoSource
    from feval_core.video.store import FeatureStore
    from feval_core.video.train import VideoTrainConfig

    cfg = VideoTrainConfig(base=str(ckpt / "backbone"), temporal_model=str(ckpt / "temporal"),
                           branches=("spatial", "temporal"), num_key_frames=2, num_clip_frames=8, frame_side=64)
    vcfg = cfg.video_config()
    extractor = FeatureExtractor(vcfg, *load_encoders(vcfg, None))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00not a video" * 40)
    files = [manifest.parent / f"c{i:02d}.mp4" for i in range(4)] + [bad]
    sources = [VideoSource("file", str(p), p.name) for p in files]
    cache = FeatureCache.for_run(tmp_path / "run", vcfg, None)
    done, errors = FeatureStore(tmp_path / "scratch", cache).fill(extractor, sources, range(5))
    assert sorted(done) == [0, 1, 2, 3] and list(errors) == [4] and cache.stored == 4
    entry = Path(done[2])
    entry.write_bytes(entry.read_bytes()[:-50])
    again = FeatureCache.for_run(tmp_path / "run", vcfg, None)
    done2, _ = FeatureStore(tmp_path / "scratch", again).fill(extractor, sources, range(4))
    assert (again.hits, again.stored) == (3, 1) and done2 == done
    assert read_features(entry, "c02").temporal is not None


def test_each_process_gets_its_own_gpu(monkeypatch) -> None:
    """Under ``accelerate launch`` ``--device cuda`` is the process's own GPU; a fixed ``cuda:N`` is refused (every
    process would share one GPU); one process keeps the device as given."""
    from feval_core.errors import ConfigError
    from feval_core.video.train import process_device

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert process_device("cuda:1") == "cuda:1" and process_device("cpu") == "cpu"
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert process_device("cuda") == "cuda:3" and process_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="--device cuda"):
        process_device("cuda:0")
