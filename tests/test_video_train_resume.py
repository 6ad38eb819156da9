"""Video manifests through `feval train` / `feval eval`, resumable video training and the on-disk feature cache.

One tiny video checkpoint (backbone, VideoMAE, face pack) and twelve 8-frame mp4 clips are built once; every run
here is a few optimizer steps on CPU.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av")

import feval_core.video.train as video_train  # noqa: E402
from feval_core.cli import EXIT_SOME_FAILED, EXIT_USAGE, main  # noqa: E402
from feval_core.errors import ConfigError, ManifestError  # noqa: E402
from feval_core.testing.video import make_tiny_video_checkpoint, synthetic_video_set, write_clip  # noqa: E402
from feval_core.video.cache import CACHE_DIR, FeatureCache  # noqa: E402
from feval_core.video.sources import VideoSource  # noqa: E402

SPLITS = ["train"] * 6 + ["val"] * 3 + ["test"] * 3


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_video_checkpoint(tmp_path_factory.mktemp("vckpt") / "tiny", seed=0, samples=False)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[Path, float, str]]]:
    """Twelve mp4 clips with their MOS and split, and a manifest of them."""
    folder = tmp_path_factory.mktemp("clips")
    rows = []
    for i, (frames, mos, _) in enumerate(synthetic_video_set(len(SPLITS), seed=5, n=8, size=64)):
        rows.append((write_clip(folder / f"c{i:02d}.mp4", frames), float(mos), SPLITS[i]))
    manifest = folder / "videos.jsonl"
    manifest.write_text("".join(json.dumps({"video": p.name, "mos": m, "split": s}) + "\n" for p, m, s in rows))
    return manifest, rows


def _train_args(ckpt: Path, manifest: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--manifest", str(manifest), "--out", str(out), "--base", str(ckpt / "backbone"),
            "--temporal-model", str(ckpt / "temporal"), "--branches", "spatial,temporal", "--num-key-frames", "2",
            "--num-clip-frames", "8", "--temporal-tokens", "2", "--frame-side", "64", "--max-image-pixels", "3136",
            "--lora-rank", "4", "--lora-alpha", "8", "--epochs", "2", "--batch-size", "3", *extra]


def _summary(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _config(ckpt: Path, **kw: object) -> video_train.VideoTrainConfig:
    base = dict(base=str(ckpt / "backbone"), temporal_model=str(ckpt / "temporal"), branches=("spatial", "temporal"),
                num_key_frames=2, num_clip_frames=8, temporal_tokens=2, frame_side=64, max_image_pixels=56 * 56,
                lora_rank=4, lora_alpha=8, epochs=2, batch_size=2, lr=1e-2, schedule="two_stage", save_every=2)
    return video_train.VideoTrainConfig(**{**base, **kw})


def _pairs(rows: list[tuple[Path, float, str]], split: str) -> list[tuple[VideoSource, float]]:
    return [(VideoSource("file", str(p), str(p)), m) for p, m, s in rows if s == split]


def test_feval_train_and_eval_take_a_video_manifest(ckpt, clips, tmp_path, capsys) -> None:
    """`feval train` on a video manifest trains a video checkpoint (stopped, then resumed from the feature cache);
    `feval eval` scores it as `feval video eval` does, with an error row for a clip that cannot be read."""
    manifest, rows = clips
    out = tmp_path / "run"
    assert main(_train_args(ckpt, manifest, out, "--stop-after", "2")) == 0
    first = _summary(capsys)
    assert first["finished"] is False and first["steps"] == 2
    assert first["feature_cache"] == {"hits": 0, "stored": 9}  # 6 training + 3 validation clips
    assert not (out / "adapters").exists() and (out / "state" / "trainer_state.json").is_file()
    assert len(list((out / CACHE_DIR).glob("*.safetensors"))) == 9
    assert main(_train_args(ckpt, manifest, out, "--resume")) == 0
    done = _summary(capsys)
    assert done["finished"] is True and done["steps"] == 4  # ceil(6 / 3) x 2 epochs
    assert done["feature_cache"] == {"hits": 9, "stored": 0}  # nothing decoded again
    assert done["val"]["n"] == 3 and -1.0 <= done["val"]["srcc"] <= 1.0
    assert (out / "video_config.json").is_file() and (out / "adapters" / "quality").is_dir()
    assert [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()] == [0, 1, 2, 3]

    bad = manifest.parent / "with_bad.jsonl"
    (manifest.parent / "broken.mp4").write_bytes(b"\x00not a video" * 50)
    bad.write_text(manifest.read_text() + json.dumps({"video": "broken.mp4", "mos": 40.0, "split": "test"}) + "\n")
    ev = tmp_path / "eval"
    assert main(["eval", "--model", str(out), "--manifest", str(bad), "--split", "test", "--out", str(ev)]) \
        == EXIT_SOME_FAILED
    table = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert table["n"] == 3 and table["failed"] == 1 and -1.0 <= table["srcc"] <= 1.0
    assert json.loads((ev / "eval_table.json").read_text()) == table
    preds = [json.loads(x) for x in (ev / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 4 and sum(r["error"] is not None for r in preds) == 1
    assert all(0 <= r["video_quality"] <= 100 for r in preds if r["error"] is None)
    assert main(["video", "eval", "--model", str(out), "--manifest", str(manifest), "--split", "test"]) == 0
    same = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert same["n"] == 3 and same["srcc"] == pytest.approx(table["srcc"], abs=1e-6)


def test_mixed_and_mismatched_inputs_are_usage_errors(ckpt, clips, tmp_path, caplog) -> None:
    """Exit 2 with what to do: a manifest mixing image and video rows, options of the other kind, a video checkpoint
    on an image manifest, resuming a run that is not there and writing over one that is."""
    manifest, rows = clips
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"image": "a.png", "task": "generation", "mos": {"quality": 50}}) + "\n"
                     + json.dumps({"video": str(rows[0][0]), "mos": 50.0}) + "\n")
    image = tmp_path / "images.jsonl"
    image.write_text(json.dumps({"image": "a.png", "task": "generation", "mos": {"quality": 50}}) + "\n")
    cases = [
        (_train_args(ckpt, mixed, tmp_path / "r1"), "mixes image rows (line 1) and video rows"),
        (["video", "train", *_train_args(ckpt, mixed, tmp_path / "r1")[1:]], "mixes image rows"),
        (_train_args(ckpt, manifest, tmp_path / "r2", "--val-fraction", "0.2", "--dims", "quality"),
         "--dims, --val-fraction apply only to image manifests"),
        (["train", "--manifest", str(image), "--base", str(ckpt / "backbone"), "--out", str(tmp_path / "r3"),
          "--temporal-model", "x"], "--temporal-model applies only to video manifests"),
        (["train", "--manifest", str(manifest), "--base", str(ckpt / "backbone"), "--out", str(tmp_path / "r4")],
         "a video manifest needs --temporal-model"),
        (["eval", "--model", str(ckpt), "--manifest", str(image), "--out", str(tmp_path / "e1")],
         "is a video checkpoint but --manifest"),
        (["eval", "--model", str(ckpt), "--manifest", str(manifest), "--dims", "quality", "--out",
          str(tmp_path / "e2")], "--dims applies only to image checkpoints"),
        (_train_args(ckpt, manifest, tmp_path / "r5", "--resume"), "no saved video training state"),
    ]
    for argv, message in cases:
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="feval"):
            assert main(argv) == EXIT_USAGE, argv
        assert message in caplog.text, (message, caplog.text)
    with pytest.raises(ManifestError, match="mixes"):
        from feval_core.video.manifest import manifest_kind

        manifest_kind(mixed)


def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(ckpt, clips, tmp_path, monkeypatch) -> None:
    """Kill a run after its 5th of 6 steps (state saved at step 4): resuming takes steps 4 and 5 again and ends
    with the weights, losses and held-out scores of a run that was never stopped."""
    import feval_core.video.loop as loop

    _, rows = clips
    train, val = _pairs(rows, "train"), _pairs(rows, "val")
    whole = video_train.train_video(_config(ckpt), train, val, out=tmp_path / "whole")
    assert whole.finished and whole.steps == 6 and [h["stage"] for h in whole.history] == [1, 1, 1, 2, 2, 2]

    real_step = loop._step

    def killed_at_5(*args, **kwargs):
        if args[4] == 5:  # the step index
            raise KeyboardInterrupt("killed")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "_step", killed_at_5)
    with pytest.raises(KeyboardInterrupt):
        video_train.train_video(_config(ckpt), train, val, out=tmp_path / "killed")
    state = json.loads((tmp_path / "killed" / "state" / "trainer_state.json").read_text())
    assert (state["step"], state["epoch"], state["micro_in_epoch"]) == (4, 1, 1)
    monkeypatch.setattr(loop, "_step", real_step)
    with pytest.raises(ConfigError, match="pass --resume"):
        video_train.train_video(_config(ckpt), train, val, out=tmp_path / "killed")
    with pytest.raises(ConfigError, match="settings differ"):
        video_train.train_video(_config(ckpt, resume=True, lr=2e-2), train, val, out=tmp_path / "killed")
    resumed = video_train.train_video(_config(ckpt, resume=True), train, val, out=tmp_path / "killed")
    assert resumed.finished and resumed.steps == 6
    assert resumed.cache == {"hits": 9, "stored": 0}
    assert [h["step"] for h in resumed.history] == list(range(6))
    np.testing.assert_allclose([h["loss"] for h in resumed.history], [h["loss"] for h in whole.history], rtol=1e-4)
    a, b = dict(whole.model.trainable_parameters()), dict(resumed.model.trainable_parameters())
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4, msg=name)
    np.testing.assert_allclose(resumed.val_predictions, whole.val_predictions, atol=1e-3)
    assert resumed.val["srcc"] == pytest.approx(whole.val["srcc"], abs=1e-6)


def test_feature_cache_skips_decoding_and_misses_on_change(ckpt, clips, tmp_path, monkeypatch) -> None:
    """A second extraction with the cache decodes nothing and gives the same features; a clip whose file changed,
    or a different sampling, is decoded again; arrays are not cached."""
    from feval_core.video.checkpoint import load_encoders
    from feval_core.video.features import FeatureExtractor

    _, rows = clips
    sources = [s for s, _ in _pairs(rows, "train")][:4]
    decoded: list[str] = []
    real = video_train.load_clip

    def counting(source, sampling):
        decoded.append(source.name)
        return real(source, sampling)

    monkeypatch.setattr(video_train, "load_clip", counting)
    cfg = _config(ckpt)
    vcfg = cfg.video_config()
    extractor = FeatureExtractor(vcfg, *load_encoders(vcfg, None))
    cache = FeatureCache.for_run(tmp_path, vcfg, None)
    first, _ = video_train.extract(extractor, sources, cache=cache)
    assert len(decoded) == 4 and cache.stored == 4 and len(list((tmp_path / CACHE_DIR).iterdir())) == 4
    decoded.clear()
    again = FeatureCache.for_run(tmp_path, vcfg, None)
    second, _ = video_train.extract(extractor, sources, cache=again)
    assert decoded == [] and again.hits == 4
    for f, g in zip(first, second):
        torch.testing.assert_close(g.temporal, f.temporal)
        assert g.key_times == pytest.approx(f.key_times)
        assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(f.key_frames, g.key_frames))
    st = os.stat(sources[0].source)
    os.utime(sources[0].source, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file changed
    other = _config(ckpt, num_key_frames=3).video_config()
    video_train.extract(extractor, sources, cache=FeatureCache.for_run(tmp_path, vcfg, None))
    assert decoded == [sources[0].name]
    assert FeatureCache.for_run(tmp_path, other, None).key(sources[1]) != again.key(sources[1])
    assert again.key(VideoSource("array", np.zeros((4, 8, 8, 3), np.uint8), "<0>")) is None


def test_a_garbled_cache_entry_is_recomputed(ckpt, clips, tmp_path) -> None:
    """A cache file whose safetensors header is garbage (safetensors raises its own error type, not OSError) is a
    miss with a warning, not a crash."""
    from feval_core.video.checkpoint import load_encoders
    from feval_core.video.features import FeatureExtractor

    _, rows = clips
    sources = [s for s, _ in _pairs(rows, "train")][:1]
    vcfg = _config(ckpt).video_config()
    extractor = FeatureExtractor(vcfg, *load_encoders(vcfg, None))
    cache = FeatureCache.for_run(tmp_path, vcfg, None)
    video_train.extract(extractor, sources, cache=cache)
    entry = cache.path(cache.key(sources[0]))
    entry.write_bytes((64).to_bytes(8, "little") + b"{not json" + b" " * 55 + b"x" * 100)
    again = FeatureCache.for_run(tmp_path, vcfg, None)
    assert again.get(sources[0]) is None and again.hits == 0
    feats, errors = video_train.extract(extractor, sources, cache=again)
    assert not errors and feats[0] is not None
