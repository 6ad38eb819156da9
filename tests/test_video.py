"""Face video quality (FVQ-Rater room): inputs and the bad-video corpus, sampling, the model's four feature kinds,
scoring through the API and the CLI, resuming, checkpoints, manifests and the FVQ-20K importer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from feval_core.errors import ConfigError, ManifestError  # noqa: E402
from feval_core.testing.video import (  # noqa: E402
    CORPUS_LIMITS,
    make_tiny_video_checkpoint,
    moving_face_frames,
    write_bad_video_corpus,
)
from feval_core.video.config import VideoConfig, VideoLimits  # noqa: E402
from feval_core.video.decode import Sampling, load_clip  # noqa: E402
from feval_core.video.sources import VideoInputError, VideoSource, expand_videos  # noqa: E402


@pytest.fixture(scope="module")
def video_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny video checkpoint whose limits make the corpus's long and large clips bad."""
    out = make_tiny_video_checkpoint(tmp_path_factory.mktemp("vckpt") / "tiny", seed=0)
    cfg = json.loads((out / "video_config.json").read_text())
    cfg["limits"].update(CORPUS_LIMITS)
    (out / "video_config.json").write_text(json.dumps(cfg))
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str | None]]:
    folder = tmp_path_factory.mktemp("corpus")
    return folder, write_bad_video_corpus(folder)


@pytest.fixture(scope="module")
def scorer(video_ckpt: Path):
    from feval_core.video.scorer import VideoScorer

    return VideoScorer.from_pretrained(video_ckpt, workers=2)


def _check_rows(rows: list[dict], folder: Path, expect: dict[str, str | None]) -> None:
    by_name = {Path(r["image"]).name: r for r in rows}
    assert sorted(by_name) == sorted(expect), "one row per video"
    for name, word in expect.items():
        row = by_name[name]
        if word is None:
            assert row["error"] is None, (name, row["error"])
            assert 0.0 <= row["video_quality"] <= 100.0
            assert row["faces"] == 4 and row["face_frames"] == 4  # the tiny pack finds the face in each key frame
        else:
            assert row["video_quality"] is None and word in row["error"], (name, row["error"])


def test_bad_video_corpus_through_the_api(scorer, corpus) -> None:
    folder, expect = corpus
    rows = scorer.score(sorted(str(folder / n) for n in expect), batch_size=3)
    _check_rows(rows, folder, expect)
    good = [r["video_quality"] for r in rows if r["error"] is None]
    assert max(good) - min(good) < 5.0  # the same frames in five containers score alike (lossy codecs differ)


def test_bad_video_corpus_through_the_cli_and_resume(video_ckpt, corpus, tmp_path) -> None:
    from feval_core.cli import main
    from feval_core.inputs.results import read_results

    folder, expect = corpus
    out = tmp_path / "rows.jsonl"
    assert main(["score", str(folder), "--model", str(video_ckpt), "--prefilter", "0",
                 "--prefilter-model", str(tmp_path)]) == 2  # refused, not silently dropped
    assert not out.exists()
    assert main(["score", str(folder), "--model", str(video_ckpt), "--out", str(out), "--workers", "0"]) == 1
    rows = read_results(out)
    _check_rows(rows, folder, expect)
    # a killed run: two complete rows and a torn third line; re-running scores only what is missing
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][:10])
    assert main(["score", str(folder), "--model", str(video_ckpt), "--out", str(out)]) == 1
    again = read_results(out)
    assert len(again) == len(expect) and len({r["image"] for r in again}) == len(expect)
    before = {r["image"]: r["video_quality"] for r in rows}
    for r in again:
        assert r["video_quality"] == before[r["image"]]


def test_sampling_is_uniform_in_time_for_files_arrays_and_folders(tmp_path) -> None:
    from PIL import Image

    from feval_core.testing.video import write_clip

    frames = moving_face_frames(40, 64)
    s = Sampling(num_key_frames=4, num_clip_frames=8, frame_side=64, clip_side=32)
    write_clip(tmp_path / "c.mp4", frames, fps=10)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / f"f{i:03d}.png")
    clips = [load_clip(VideoSource("file", str(tmp_path / "c.mp4"), "c"), s),
             load_clip(VideoSource("frames", str(tmp_path), "d", 10.0), s),
             load_clip(VideoSource("array", frames, "a", 10.0), s),
             load_clip(VideoSource("array", torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255, "t", 10.0), s)]
    for c in clips:
        assert c.duration == pytest.approx(4.0, abs=0.05)
        assert c.key_times == pytest.approx([0.5, 1.5, 2.5, 3.5], abs=0.06)
        assert c.clip_frames.shape == (8, 32, 32, 3) and len(c.key_frames) == 4
    # the array and tensor layouts give the same frames; the folder's PNGs too
    assert np.array_equal(clips[2].key_frames[1], clips[1].key_frames[1])
    assert np.abs(clips[3].key_frames[1].astype(int) - clips[2].key_frames[1]).max() <= 1
    assert np.array_equal(clips[2].key_frames[1], frames[15])  # t = 1.5 s at 10 fps


def test_inputs_expand_and_refuse_clearly(tmp_path) -> None:
    assert [s.kind for s in expand_videos(np.zeros((3, 8, 8, 3), np.uint8))] == ["array"]
    assert [s.kind for s in expand_videos([np.zeros((3, 8, 8, 3), np.uint8)] * 2)] == ["array", "array"]
    with pytest.raises(VideoInputError, match="not a video"):
        expand_videos([42])
    with pytest.raises(VideoInputError, match=r"\[T,H,W,C\]"):
        load_clip(VideoSource("array", np.zeros((3, 8, 8, 7), np.uint8), "x"), Sampling())
    with pytest.raises(VideoInputError, match="no frames"):
        load_clip(VideoSource("array", np.zeros((0, 8, 8, 3), np.uint8), "x"), Sampling())
    with pytest.raises(VideoInputError, match="over the limit"):
        load_clip(VideoSource("array", np.zeros((50, 8, 8, 3), np.uint8), "x", 1.0),
                  Sampling(limits=VideoLimits(max_seconds=10.0)))

    class ComfyVideo:  # ComfyUI's VIDEO type: get_components() -> images [T,H,W,C] in [0, 1] and a frame rate
        def get_components(self):
            from types import SimpleNamespace

            return SimpleNamespace(images=torch.rand(6, 16, 16, 3), frame_rate=12)

    (src,) = expand_videos([ComfyVideo()])  # decoded when the clip is loaded (a failure is that video's row)
    assert src.kind == "comfy" and load_clip(src, Sampling(num_key_frames=2, num_clip_frames=2)).fps == 12.0


def test_model_uses_all_four_feature_kinds(scorer) -> None:
    """Each feature kind reaches the score: changing only it changes the output."""
    from feval_core.video.features import detect_faces

    frames = moving_face_frames(16, 128)
    clip = load_clip(VideoSource("array", frames, "c", 8.0), scorer.extractor.sampling)
    (feats,) = scorer.extractor([clip], [detect_faces(clip, scorer.extractor.face_encoder)])
    model = scorer.model
    assert feats.temporal.shape == (4, 32) and feats.portrait.shape == (4, 17)
    assert all(f is not None for f in feats.faces)
    with torch.no_grad():
        base = float(model.scores(model.score_clips([feats]))[0])
        import copy

        for change in ("temporal", "portrait", "faces", "spatial"):
            other = copy.copy(feats)
            if change == "temporal":
                noise = torch.randn(feats.temporal.shape, generator=torch.Generator().manual_seed(0))
                other.temporal = feats.temporal + noise
            elif change == "portrait":
                other.portrait = feats.portrait * -1.0
            elif change == "faces":
                other.faces = [None] * len(feats.faces)
            else:
                from PIL import Image

                other.key_frames = [Image.fromarray(255 - np.asarray(im)) for im in feats.key_frames]
            assert abs(float(model.scores(model.score_clips([other]))[0]) - base) > 1e-4, change


def test_checkpoint_round_trip_and_config_checks(scorer, video_ckpt, tmp_path) -> None:
    from feval_core.video.checkpoint import save_video_checkpoint
    from feval_core.video.scorer import VideoScorer

    frames = moving_face_frames(16, 128)
    save_video_checkpoint(scorer.model, tmp_path / "copy", source=video_ckpt)
    assert (tmp_path / "copy" / "video_projectors.safetensors").is_file()
    assert json.loads((tmp_path / "copy" / "video_config.json").read_text())["kind"] == "video"
    again = VideoScorer.from_pretrained(tmp_path / "copy")
    a, b = scorer.score(frames, fps=8)[0], again.score(frames, fps=8)[0]
    assert a["video_quality"] == pytest.approx(b["video_quality"], abs=1e-4)
    with pytest.raises(ConfigError, match="spatial"):
        VideoConfig(branches=("temporal",))
    with pytest.raises(ConfigError, match="unknown keys"):
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "video_config.json").write_text('{"frames": 3}')
        VideoConfig.load(tmp_path / "bad")
    with pytest.raises(Exception, match="image checkpoint"):
        from feval_core.video.checkpoint import load_video_checkpoint

        img = tmp_path / "img"
        img.mkdir()
        (img / "feval_config.json").write_text('{"base_model": "x"}')
        load_video_checkpoint(img)


def test_manifest_and_fvq_importer(tmp_path) -> None:
    from feval_core.video.manifest import import_fvq, read_video_manifest

    vids = tmp_path / "videos"
    vids.mkdir()
    for i in range(40):
        (vids / f"v{i}.mp4").write_bytes(b"x")
    (tmp_path / "scores.csv").write_text("Video_Name,MOS\n" + "".join(f"v{i}.mp4,{i * 2.5}\n" for i in range(40)))
    rows = import_fvq(tmp_path / "scores.csv", vids, tmp_path / "m.jsonl", seed=0)
    assert [sum(r.split == s for r in rows) for s in ("train", "val", "test")] == [32, 2, 6]
    back = read_video_manifest(tmp_path / "m.jsonl")
    assert sorted(r.mos for r in back) == sorted(i * 2.5 for i in range(40))
    (tmp_path / "odd.csv").write_text("clip;rating\nv0.mp4;3\n")
    with pytest.raises(ManifestError, match="unknown layout"):
        import_fvq(tmp_path / "odd.csv", vids, tmp_path / "m2.jsonl")
    (tmp_path / "five.csv").write_text("name,mos\nv0.mp4,4.5\n")
    with pytest.raises(ManifestError, match="scale"):
        import_fvq(tmp_path / "five.csv", vids, tmp_path / "m3.jsonl", scale=100)
    (tmp_path / "bad.jsonl").write_text('{"video": "videos/v0.mp4", "mos": 140}\n{"video": "nope.mp4", "mos": 3}\n')
    with pytest.raises(ManifestError, match="2 bad rows"):
        read_video_manifest(tmp_path / "bad.jsonl")
    assert math.isfinite(back[0].mos)
    bom = tmp_path / "bom.jsonl"  # saved by an editor that writes a byte-order mark
    bom.write_bytes("\ufeff".encode() + (tmp_path / "m.jsonl").read_bytes())
    assert len(read_video_manifest(bom)) == 40
    from feval_core.video.manifest import manifest_kind

    assert manifest_kind(bom) == "video"


def test_video_reward_flow_grpo_shape(scorer) -> None:
    from reward.video import flow_grpo_video_reward, video_reward

    good = torch.from_numpy(moving_face_frames(16, 128)).float() / 255
    batch = torch.stack([good, good.flip(0)])  # [B, T, H, W, C]
    r = video_reward(batch, ["a", "b"], scorer=scorer, fps=8)
    direct = [row["video_quality"] for row in scorer.score([good, good.flip(0)], fps=8)]
    assert r.dtype == np.float32 and np.allclose(r, direct, atol=1e-3)
    bad = [good, torch.zeros(0, 8, 8, 3)]  # an empty clip: NaN, then nan_reward in "avg"
    out, meta = flow_grpo_video_reward(scorer, fps=8)(bad, ["a", "b"], [{}, {}], only_strict=True)
    assert np.isclose(out["video_quality"][0], r[0] * 0.01, atol=1e-5) and np.isnan(out["video_quality"][1])
    assert out["avg"][1] == 0.0 and meta == {}
    with pytest.raises(ValueError, match="one prompt per video"):
        video_reward(batch, ["a"], scorer=scorer)


def test_video_node_scores_frames_and_video(video_ckpt, corpus, tmp_path_factory) -> None:
    import shutil
    from types import SimpleNamespace

    from tests.comfy_stub import install, load_pack, node_classes

    base = tmp_path_factory.mktemp("ComfyUI")
    install(base)
    shutil.copytree(video_ckpt, base / "models" / "feval" / "tiny-video")
    node = node_classes(load_pack())["FEvalScoreFaceVideo"]
    assert "tiny-video" in [i for i in node.GET_SCHEMA().inputs if i.id == "video_model"][0].options
    frames = torch.from_numpy(moving_face_frames(16, 128)).float() / 255
    q, report = node.execute("tiny-video", frames, 8.0, None, "cpu").args[:2]
    assert 0 <= q <= 100 and "video_quality" in report

    class Video:  # ComfyUI's VIDEO
        def get_components(self):
            return SimpleNamespace(images=frames, frame_rate=8)

    assert node.execute("tiny-video", None, 8.0, Video(), "cpu").args[0] == pytest.approx(q, abs=1e-3)
    q_bad, report_bad = node.execute("tiny-video", torch.zeros(0, 8, 8, 3), 8.0, None, "cpu").args[:2]
    assert math.isnan(q_bad) and "no frames" in report_bad
    with pytest.raises(ValueError, match="not a path"):
        node.execute("../x", frames, 8.0, None, "cpu")


def test_video_train_and_eval_commands(video_ckpt, corpus, tmp_path, capsys) -> None:
    """`feval video train` on a manifest (an unreadable clip is left out, not fatal), then `feval video eval`."""
    from feval_core.cli import main
    from feval_core.video.scorer import VideoScorer

    folder, expect = corpus
    good = sorted(n for n, w in expect.items() if w is None)
    lines = [json.dumps({"video": str(folder / n), "mos": 20.0 + 15 * i, "split": "train"}) for i, n in enumerate(good)]
    lines += [json.dumps({"video": str(folder / "corrupt.mp4"), "mos": 50.0, "split": "train"})]
    lines += [json.dumps({"video": str(folder / n), "mos": 30.0 + 20 * i, "split": "test"}) for i, n in
              enumerate(good[:3])]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    assert main(["video", "train", "--manifest", str(manifest), "--out", str(out), "--base",
                 str(video_ckpt / "backbone"), "--temporal-model", str(video_ckpt / "temporal"), "--portrait-model",
                 str(video_ckpt / "portrait"), "--face-pack", "tiny_face", "--face-root",
                 str(video_ckpt / "face_pack"), "--det-size", "128", "--num-key-frames", "2", "--num-clip-frames", "8",
                 "--max-image-pixels", "3136", "--lora-rank", "4", "--lora-alpha", "8", "--epochs", "1",
                 "--batch-size", "4", "--frame-side", "128", "--portrait-size", "64"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["skipped"] == 1
    assert (out / "video_config.json").is_file() and (out / "adapters" / "quality").is_dir()
    rows = VideoScorer.from_pretrained(out).score([str(folder / good[0])])
    assert rows[0]["error"] is None and 0 <= rows[0]["video_quality"] <= 100
    assert main(["video", "eval", "--model", str(out), "--manifest", str(manifest), "--split", "test"]) == 0
    table = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert table["n"] == 3 and -1.0 <= table["srcc"] <= 1.0


def test_trained_video_checkpoint_reloads_to_the_same_scores(video_ckpt, tmp_path) -> None:
    """Everything training changes is saved: the expert, the head, the video projectors and the backbone's vision
    projector (trained by default); the reloaded checkpoint scores the held-out clips as the trained model did."""
    from feval_core.testing.video import synthetic_video_set
    from feval_core.video.checkpoint import load_video_checkpoint
    from feval_core.video.train import VideoTrainConfig, extract, predict, train_video

    data = synthetic_video_set(10, seed=3, n=8, size=64)
    pairs = [(VideoSource("array", f, f"<{i}>", 8.0), m) for i, (f, m, _) in enumerate(data)]
    cfg = VideoTrainConfig(base=str(video_ckpt / "backbone"), temporal_model=str(video_ckpt / "temporal"),
                           branches=("spatial", "temporal"), num_key_frames=2, num_clip_frames=8, temporal_tokens=2,
                           frame_side=64, max_image_pixels=56 * 56, lora_rank=4, lora_alpha=8, epochs=2, batch_size=4,
                           schedule="two_stage", lr=1e-2, vision_experts="shared")
    assert cfg.stage_bounds(6) == [3, 6] and cfg.stage_weights(0) == {"levels": 1.0}
    res = train_video(cfg, pairs[:6], pairs[6:], out=tmp_path / "run")
    assert len(res.history) == 4 and [h["stage"] for h in res.history] == [1, 1, 2, 2]
    assert (tmp_path / "run" / "vision_projector.safetensors").is_file()
    vision_b = [p for n, p in res.model.backbone.named_parameters() if "lora_B.vision." in n]
    # the tower's expert trained (its B matrices start at 0)
    assert vision_b and any(float(p.detach().abs().max()) > 0 for p in vision_b)
    parts = load_video_checkpoint(tmp_path / "run")
    assert parts.model.config.score_mode == "regression" and parts.model.config.vision_projector == "trained"
    assert parts.model.vision_experts == "shared"
    feats, _ = extract(parts.extractor, [s for s, _ in pairs[6:]])
    np.testing.assert_allclose(predict(parts.model, feats), res.val_predictions, atol=1e-3)
    with pytest.raises(ConfigError, match="schedule"):
        VideoTrainConfig(base="b", temporal_model="t", branches=("spatial",), schedule="levelz")
    with pytest.raises(ConfigError, match="vision_experts"):
        VideoTrainConfig(base="b", temporal_model="t", branches=("spatial",), vision_experts="all")


def test_shared_vision_path_scores_clips_as_the_processor_path(scorer) -> None:
    """Key frames through the image engine's shared-vision path (the tower on its own, features handed to the LLM
    pass; the only path that can apply vision experts) score as the processor + backbone forward path."""
    from feval_core.testing.video import synthetic_video_set
    from feval_core.video.train import extract

    feats, _ = extract(scorer.extractor, [VideoSource("array", f, f"<{i}>", 8.0)
                                          for i, (f, _, _) in enumerate(synthetic_video_set(3, seed=5, size=64))])
    model = scorer.model
    assert model.can_share_vision
    with torch.no_grad():
        shared = model.scores(model.score_clips(feats))
        whole = model.scores(model._score_clips_processor(feats))
    torch.testing.assert_close(shared, whole, atol=1e-3, rtol=0)
    assert float(shared.max() - shared.min()) > 0  # the clips differ
