"""Speed at scale, checked on CPU: the benchmark runs, the fast path equals the plain one, the prefetch window
is bounded, and a 2-process accelerate run writes the same file as a single process."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from feval_core import DIMENSIONS, FEvalScorer
from feval_core.inputs.prefetch import ObjectPool, Prefetcher, chunked
from feval_core.model.batching import PassStats, length_buckets, pad_left
from feval_core.model.experts import contiguous_ranges
from feval_core.model.rows import Row
from feval_core.scoring.distributed import merge_parts, part_path, shard_chunks

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ["qwen2_5_vl", "internvl", "llava"]


def _rows(faces: dict, prompts: tuple[str, ...] = ("a woman", "an old man with a beard and round glasses")):
    """Every dimension of two images (shared objects, as the scorer makes them) plus a shared reference."""
    import numpy as np

    ref = Image.fromarray(faces["a_moved"])
    rng = np.random.default_rng(0)
    rows = []
    for k, key in enumerate(("a", "b")):
        img = Image.fromarray(faces[key])
        face = rng.normal(size=512).astype(np.float32)
        for d in DIMENSIONS:
            rows.append(Row(img, d, prompt=prompts[k] if d == "correspondence" else None,
                            ref=ref if d == "identity" else None, face=face, ref_face=-face))
    return rows


# -- the fast path equals the plain path ---------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_shared_vision_path_equals_plain_path(tiny_ckpts, faces, family):
    scorer = FEvalScorer.from_pretrained(tiny_ckpts[family], device="cpu")
    m = scorer.model
    assert m.can_share_vision
    rows = _rows(faces)
    m.stats = PassStats()
    with torch.inference_mode():
        plain_batch = m.collate(rows)
        plain = m(plain_batch)
        fast = m.score_rows(rows, bucket=False)
    assert m.stats.images == 3, "the vision tower must run once per distinct image (2 images + 1 reference)"
    assert m.stats.tokens == int(plain_batch.inputs["attention_mask"].sum()), "token sequences must match"
    torch.testing.assert_close(fast.hidden, plain.hidden, atol=1e-4, rtol=0)
    torch.testing.assert_close(m.scores(fast), m.scores(plain), atol=1e-4, rtol=0)
    m.stats = None
    if family != "qwen2_5_vl":
        return
    # and end to end through the scorer, with prefetch threads (the reference family)
    kw = dict(prompts=["a woman", "a man", None], refs=faces["a_moved"])
    scorer.workers = 2
    fast_scores = scorer.score([faces["a"], faces["b"], faces["none"]], **kw).scores
    scorer.share_vision = False
    plain_scores = scorer.score([faces["a"], faces["b"], faces["none"]], **kw).scores
    torch.testing.assert_close(fast_scores, plain_scores, atol=1e-4, rtol=0, equal_nan=True)


def test_length_buckets_do_not_change_scores(tiny_scorer, faces):
    m = tiny_scorer.model
    rows = _rows(faces)
    m.stats = PassStats()
    try:
        with torch.inference_mode():
            one_pass = m.score_rows(rows, bucket=False)
            m.stats.reset()
            bucketed = m.score_rows(rows, bucket=True, max_padding=0.0)
            passes, padding = m.stats.passes, m.stats.padding_fraction
    finally:
        m.stats = None
    assert passes > 1 and padding == 0.0, "max_padding=0 must split rows of different lengths"
    torch.testing.assert_close(bucketed.hidden, one_pass.hidden, atol=1e-4, rtol=0)
    torch.testing.assert_close(m.scores(bucketed), m.scores(one_pass), atol=1e-4, rtol=0)


def test_length_buckets_bound_padding_and_tokens():
    lengths = [50, 52, 120, 51, 119, 300, 49, 118]
    groups = length_buckets(lengths, max_padding=0.1)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        longest = max(lengths[i] for i in g)
        assert longest * len(g) - sum(lengths[i] for i in g) <= 0.1 * longest * len(g)
    assert len(groups) == 3
    capped = length_buckets(lengths, max_padding=0.5, max_tokens=240)
    assert all(max(lengths[i] for i in g) * len(g) <= 240 or len(g) == 1 for g in capped)
    assert length_buckets([], 0.1) == []
    with pytest.raises(ValueError, match="max_padding"):
        length_buckets([1], max_padding=1.5)


def test_pad_left_keeps_the_answer_last():
    ids, mask = pad_left([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_expert_ranges_need_adjacent_names():
    assert contiguous_ranges(["q", "q", "a", "i"]) == [("q", 0, 2), ("a", 2, 3), ("i", 3, 4)]
    assert contiguous_ranges(["q", "a", "q"]) is None


def test_batched_window_attention_equals_the_per_window_loop(tiny_ckpt):
    from transformers import AutoModelForImageTextToText

    from feval_core.model.vision_attention import (
        batch_window_attention,
        restore_window_attention,
    )

    model = AutoModelForImageTextToText.from_pretrained(tiny_ckpt / "backbone", attn_implementation="sdpa").eval()
    vision = model.model.visual
    grid = torch.tensor([[1, 8, 12], [1, 6, 6], [1, 10, 4]])  # several windows per image, uneven last ones
    torch.manual_seed(0)
    pixels = torch.randn(int(grid.prod(-1).sum()), 3 * 2 * 14 * 14)
    with torch.no_grad():
        loop = vision(pixels, grid_thw=grid).pooler_output
        assert batch_window_attention(model) == len(vision.blocks)
        batched = vision(pixels, grid_thw=grid).pooler_output
        assert restore_window_attention(model) == len(vision.blocks)
    torch.testing.assert_close(batched, loop, atol=1e-5, rtol=0)


# -- prefetching -----------------------------------------------------------------------------------------
def _lazy_chunks(source, size):
    it = iter(source)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def test_prefetcher_keeps_a_bounded_window_in_order():
    pulled = 0
    lock = threading.Lock()

    def source():
        nonlocal pulled
        for i in range(60):
            with lock:
                pulled += 1
            yield i

    size, ahead = 4, 2
    pf = Prefetcher(_lazy_chunks(source(), size), lambda x, state: x * 10, workers=3, ahead=ahead)
    seen, consumed, worst = [], 0, 0
    for chunk in pf:
        time.sleep(0.01)  # a slow model: the workers must not run further ahead than the window
        with lock:
            worst = max(worst, pulled - consumed)
        consumed += len(chunk)
        seen.extend(chunk)
    assert seen == [10 * i for i in range(60)]
    assert worst <= (ahead + 1) * size, f"{worst} items taken from the source before being consumed"
    assert pf.stats.max_in_flight <= ahead * size and pf.stats.items == 60


def test_prefetcher_reuses_worker_state_and_reports_errors():
    pool = ObjectPool(object)

    def prepare(x, state):
        assert state is not None
        if x == 7:
            raise RuntimeError("bad item 7")
        return x

    got = []
    with pytest.raises(RuntimeError, match="bad item 7"):
        for chunk in Prefetcher(chunked(list(range(12)), 3), prepare, workers=2, make_state=pool.acquire,
                                release_state=pool.release):
            got.extend(chunk)
    assert got == [0, 1, 2, 3, 4, 5]
    assert pool.created <= 2 and len(pool._free) == pool.created, "states must go back to the pool"
    serial = [c for c in Prefetcher(chunked(list(range(5)), 2), lambda x, s: x, workers=0)]
    assert serial == [[0, 1], [2, 3], [4]]


def test_scorer_streams_with_a_bounded_window(tiny_scorer, faces, tmp_path):
    for i in range(12):
        Image.fromarray(faces["a" if i % 2 else "b"]).save(tmp_path / f"{i:02d}.png")
    tiny_scorer.workers, tiny_scorer.prefetch = 2, 1
    try:
        parts = list(tiny_scorer.iter_scores(str(tmp_path), dims=["quality"], batch_size=3))
        stats = tiny_scorer.last_prefetch
    finally:
        tiny_scorer.workers, tiny_scorer.prefetch = None, 2
    assert [len(p) for p in parts] == [3, 3, 3, 3]
    assert stats.items == 12 and stats.max_in_flight <= 3, "at most `prefetch` chunks may be prepared ahead"


# -- sharding and merging --------------------------------------------------------------------------------
def test_shards_rechunk_into_the_single_process_chunks():
    items = list(range(11))
    shards = [shard_chunks(items, 3, r, 2) for r in range(2)]
    assert shards == [[0, 1, 2, 6, 7, 8], [3, 4, 5, 9, 10]]
    single = [items[i:i + 3] for i in range(0, 11, 3)]
    per_rank = [[s[i:i + 3] for i in range(0, len(s), 3)] for s in shards]
    assert sorted(per_rank[0] + per_rank[1]) == single


def test_merge_restores_input_order_and_resumes(tmp_path):
    out = tmp_path / "res.jsonl"
    out.write_bytes(b'{"image": "a", "error": null}\n{"image": "b", "er')  # torn by a kill
    part_path(out, 0).write_text('{"image": "c", "error": null}\n{"image": "b", "error": null}\n')
    part_path(out, 1).write_text('{"image": "d", "error": "broken"}\n')
    added, missing = merge_parts(out, ["a", "b", "c", "d", "e"])
    assert (added, missing) == (3, ["e"])
    assert [json.loads(x)["image"] for x in out.read_text().splitlines()] == ["a", "b", "c", "d"]
    assert part_path(out, 0).exists(), "parts stay while an input has no row"
    part_path(out, 1).write_text('{"image": "e", "error": null}\n')
    assert merge_parts(out, ["a", "b", "c", "d", "e"]) == (1, [])
    assert not part_path(out, 0).exists() and not part_path(out, 1).exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_accelerate_run_equals_one_process(tiny_ckpt, faces, tmp_path):
    from feval_core.cli import main

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, key in enumerate(["a", "b", "none", "a_moved", "b"]):
        Image.fromarray(faces[key]).save(folder / f"{i}.png")
    args = ["score", str(folder), "--model", str(tiny_ckpt), "--prompt", "a woman", "--ref",
            str(folder / "3.png"), "--batch-size", "2", "--device", "cpu", "--workers", "0"]
    single = tmp_path / "single.jsonl"
    assert main([*args, "--out", str(single)]) == 0
    sharded = tmp_path / "sharded.jsonl"
    # accelerate's --cpu starts several processes only through mpirun; its torchrun launcher (--multi_gpu)
    # starts them anywhere, and feval then joins them with the CPU (gloo) backend.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "feval_core.cli", *args, "--out", str(sharded)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "from 2 processes" in r.stderr, "both processes must have joined the run"
    assert sharded.read_text().splitlines() == single.read_text().splitlines()
    assert not list(tmp_path.glob("sharded.jsonl.part*")), "part files are removed after the merge"


# -- the benchmark ---------------------------------------------------------------------------------------
def test_throughput_benchmark_runs_on_cpu_and_prints_its_table(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("feval_throughput", ROOT / "benchmarks" / "throughput.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    code = bench.main(["--preset", "small", "--batch-sizes", "2", "--image-sizes", "112", "--images", "4",
                       "--naive-images", "1", "--workers", "1", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| backbone | batch | image px |" in printed and "| small Qwen2.5-VL-class (CPU) | 2 | 112 |" in printed
    assert "Naive path" in printed
    data = json.loads(out.read_text())
    (row,) = data["results"]
    assert row["img_per_s"] > 0 and 0 < row["mfu"] < 1 and row["ratio_to_naive"] > 0
    assert row["param_count_fit"] == pytest.approx(1.0, abs=0.01), "the FLOP formula must match the model"
    assert row["vision_runs"] < row["images"] * len(DIMENSIONS), "vision must be shared across dimensions"
    assert data["meta"]["peak_flops"] > 0
