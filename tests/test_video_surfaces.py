"""Face video quality where users meet it: ComfyUI VIDEO inputs that fail to decode give error rows, image and video
checkpoints refuse each other (API and nodes) with the fix, video checkpoints load by hub id from a Hugging Face
cache offline (``feval score`` routes a hub id to the video scorer)."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("av")

from feval_core.errors import CheckpointError  # noqa: E402
from feval_core.testing.video import make_tiny_video_checkpoint, moving_face_frames, write_clip  # noqa: E402

REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def video_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_video_checkpoint(tmp_path_factory.mktemp("vckpt") / "tiny-video", seed=0, samples=False)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "face.mp4", moving_face_frames(16, 128), fps=8)


@pytest.fixture(scope="module")
def comfy(video_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The node pack on the ComfyUI stub, with the tiny video checkpoint and two marker folders in models/feval."""
    from tests.comfy_stub import install, load_pack, node_classes

    base = tmp_path_factory.mktemp("ComfyUI")
    install(base)
    feval = base / "models" / "feval"
    shutil.copytree(video_ckpt, feval / "tiny-video")
    (feval / "image-ckpt").mkdir()
    (feval / "image-ckpt" / "feval_config.json").write_text('{"base_model": "backbone"}')
    (feval / "fiqa-model").mkdir()
    (feval / "fiqa-model" / "fiqa_config.json").write_text("{}")
    return SimpleNamespace(nodes=node_classes(load_pack()), base=base)


# -- 1. ComfyUI VIDEO inputs that cannot be decoded are error rows ----------------------------------------------
class RaisingVideo:
    """A VIDEO whose file ComfyUI cannot decode: get_components() raises, as PyAV does on a corrupt file."""

    def get_components(self):
        raise ValueError("Invalid data found when processing input")


class Components:
    def __init__(self, images: torch.Tensor, frame_rate: float = 8.0) -> None:
        self.components = SimpleNamespace(images=images, frame_rate=frame_rate)

    def get_components(self):
        return self.components


class VideoFromFile:
    """Named as ComfyUI's: its file is streamed (get_components would decode every frame as float32)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def get_stream_source(self):
        return self.path

    def get_components(self):
        raise AssertionError("a VideoFromFile of a path is streamed, never decoded whole")


def _run(node, video=None, frames=None):
    q, report = node.execute("tiny-video", frames, 8.0, video, "cpu").args[:2]
    return q, report


def test_video_node_turns_decode_failures_into_nan_and_the_reason(comfy, clip, tmp_path) -> None:
    node = comfy.nodes["FEvalScoreFaceVideo"]
    frames = torch.from_numpy(moving_face_frames(16, 128)).float() / 255
    good, good_report = _run(node, video=Components(frames))
    assert 0.0 <= good <= 100.0 and good_report.startswith("video_quality ")
    for video, reason in ((RaisingVideo(), "could not be decoded (ValueError: Invalid data"),
                          (Components(torch.zeros(0, 128, 128, 3)), "no frames"),
                          (Components(None), "no frames (audio only?)")):
        q, report = _run(node, video=video)
        assert math.isnan(q) and reason in report, report
    # a file-backed VIDEO is streamed from its file: the same clip scores as its frames do (lossy codec: close)
    streamed, _ = _run(node, video=VideoFromFile(clip))
    assert streamed == pytest.approx(good, abs=2.0)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(4096))
    q, report = _run(node, video=VideoFromFile(corrupt))
    assert math.isnan(q) and "not a readable video" in report


@pytest.mark.parametrize("frames, reason", [
    (torch.rand(6, 32, 32), "must be [T,H,W,C]"),  # a MASK batch
    (torch.rand(2, 6, 32, 32, 3), "pass a list of clips"),  # a batch of clips
    (torch.rand(6, 32, 32, 2), "C in 1, 3, 4"),
    (torch.zeros(1, 1, 1, 3).expand(4, 20000, 20000, 3), "over the limit"),  # 19 GB if it were ever converted
    (torch.full((6, 32, 32, 3), float("nan")), "NaN"),
])
def test_video_node_turns_absurd_frames_into_nan_and_the_reason(comfy, frames, reason) -> None:
    q, report = _run(comfy.nodes["FEvalScoreFaceVideo"], frames=frames)
    assert math.isnan(q) and reason in report, report


def test_one_channel_frames_score_as_grey(comfy) -> None:
    """[T,H,W,1] is grey video (the image node reads 1-channel IMAGE batches the same way): scored, and as its
    3-channel copy."""
    node = comfy.nodes["FEvalScoreFaceVideo"]
    grey = torch.from_numpy(moving_face_frames(16, 128)).float().mean(-1, keepdim=True) / 255
    one, _ = _run(node, frames=grey)
    three, _ = _run(node, frames=grey.expand(-1, -1, -1, 3).contiguous())
    assert 0.0 <= one <= 100.0 and one == pytest.approx(three, abs=1e-4)


def test_api_keeps_the_other_videos_of_a_batch(video_ckpt) -> None:
    from feval_core.video.scorer import VideoScorer

    frames = torch.from_numpy(moving_face_frames(16, 128)).float() / 255
    rows = VideoScorer.from_pretrained(video_ckpt, workers=1).score([RaisingVideo(), frames, torch.rand(3, 8, 8)],
                                                                     fps=8)
    assert [r["error"] is None for r in rows] == [False, True, False]
    assert rows[1]["video_quality"] is not None and "could not be decoded" in rows[0]["error"]


# -- 2. image and video checkpoints refuse each other with the fix ----------------------------------------------
def test_image_scorer_refuses_a_video_checkpoint_and_back(video_ckpt, tmp_path) -> None:
    from feval_core import FEvalScorer
    from feval_core.video.scorer import VideoScorer

    with pytest.raises(CheckpointError, match=r"face-video checkpoint .*feval score CLIP.mp4 --model .*VideoScorer"):
        FEvalScorer.from_pretrained(video_ckpt, device="cpu")
    image = _image_copy(video_ckpt, tmp_path / "image")
    with pytest.raises(CheckpointError, match=r"image checkpoint .*scores images.*feval video train"):
        VideoScorer.from_pretrained(image)


def test_nodes_offer_each_checkpoint_only_where_it_loads(comfy) -> None:
    loader, fiqa, video = (comfy.nodes[n] for n in ("FEvalModelLoader", "FEvalFaceUtility", "FEvalScoreFaceVideo"))
    options = loader.GET_SCHEMA().inputs[1].options
    assert "image-ckpt" in options and "tiny-video" not in options
    assert [i for i in video.GET_SCHEMA().inputs if i.id == "video_model"][0].options[0] == "tiny-video"
    refused = loader.validate_inputs("models folder", "tiny-video", "", "auto")  # e.g. a graph saved elsewhere
    assert "face-video checkpoint" in refused and "Score face video (FVQ-Rater)" in refused
    with pytest.raises(ValueError, match="Score face video"):
        loader.execute("models folder", "tiny-video", "", "auto", "cpu", "auto")
    assert "face-video checkpoint" in fiqa.validate_inputs("tiny-video")
    assert "Score face video" in fiqa.validate_inputs("tiny-video")
    assert "'Load F-Eval model'" in video.validate_inputs("image-ckpt")
    assert "ViT-FIQA" in video.validate_inputs("fiqa-model")
    assert str(comfy.base / "models" / "feval") in video.validate_inputs("nothing-here")


# -- 3. hub ids, offline from a Hugging Face cache ----------------------------------------------------------------
def _image_copy(video_ckpt: Path, out: Path) -> Path:
    """The image checkpoint inside a video checkpoint (the same backbone, expert and head)."""
    shutil.copytree(video_ckpt, out, ignore=shutil.ignore_patterns("video_*", "temporal", "portrait"))
    return out


def _into_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """``folder`` as the hub cache holds a download: files in ``blobs/``, linked from ``snapshots/<rev>/``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    for i, f in enumerate(sorted(p for p in folder.rglob("*") if p.is_file())):
        link = repo / "snapshots" / REV / f.relative_to(folder)
        shutil.copy(f, repo / "blobs" / f"{i:04d}")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / f"{i:04d}", link.parent))


@pytest.fixture()
def hub(video_ckpt, tmp_path, monkeypatch) -> Path:
    """An offline hub cache: org/tiny-video (its temporal encoder by hub id org/tiny-temporal), org/tiny-image."""
    import huggingface_hub.constants as hf

    cache = tmp_path / "hub"
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    video = tmp_path / "video"
    shutil.copytree(video_ckpt, video, ignore=shutil.ignore_patterns("temporal"))
    cfg = (video / "video_config.json").read_text().replace('"temporal_model": "temporal"',
                                                            '"temporal_model": "org/tiny-temporal"')
    assert "org/tiny-temporal" in cfg
    (video / "video_config.json").write_text(cfg)
    _into_cache(cache, "org/tiny-video", video)
    _into_cache(cache, "org/tiny-temporal", video_ckpt / "temporal")
    _into_cache(cache, "org/tiny-image", _image_copy(video_ckpt, tmp_path / "image"))
    return cache


def test_video_checkpoint_by_hub_id_scores_as_the_folder(hub, video_ckpt, clip) -> None:
    from feval_core.video.scorer import VideoScorer

    local = VideoScorer.from_pretrained(video_ckpt, workers=0).score([str(clip)])[0]
    remote = VideoScorer.from_pretrained("org/tiny-video", cache_dir=str(hub), workers=0)
    assert remote.folder.is_relative_to(hub / "models--org--tiny-video" / "snapshots")
    assert remote.model.config.trust_remote_code is False
    row = remote.score([str(clip)])[0]
    assert row["error"] is None and row["video_quality"] == pytest.approx(local["video_quality"], abs=1e-4)
    with pytest.raises(CheckpointError, match="not in the local cache"):
        VideoScorer.from_pretrained("org/not-downloaded", cache_dir=str(hub))
    with pytest.raises(CheckpointError, match="image checkpoint"):
        VideoScorer.from_pretrained("org/tiny-image", cache_dir=str(hub))


def test_image_scorer_by_hub_id_loads_images_and_refuses_video(hub, video_ckpt, tmp_path, monkeypatch) -> None:
    import huggingface_hub

    from feval_core import FEvalScorer
    from tests.conftest import face_image

    img = face_image(0)
    local = FEvalScorer.from_pretrained(_image_copy(video_ckpt, tmp_path / "img"), device="cpu").score([img])
    remote = FEvalScorer.from_pretrained("org/tiny-image", device="cpu", cache_dir=str(hub)).score([img])
    torch.testing.assert_close(remote.scores, local.scores, rtol=0, atol=1e-5, equal_nan=True)
    patterns: list[list[str]] = []
    real = huggingface_hub.snapshot_download

    def spy(repo_id, allow_patterns=None, **kwargs):
        patterns.append(list(allow_patterns))
        return real(repo_id, allow_patterns=allow_patterns, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    with pytest.raises(CheckpointError, match="face-video checkpoint"):
        FEvalScorer.from_pretrained("org/tiny-video", device="cpu", cache_dir=str(hub))
    assert patterns and not any(p.endswith("/**") for ps in patterns for p in ps), "refused before the backbone"


def test_feval_score_routes_a_video_hub_id_to_the_video_scorer(hub, clip, tmp_path) -> None:
    from feval_core.cli import main
    from feval_core.cli.video import is_video_model
    from feval_core.inputs.results import read_results

    assert is_video_model("org/tiny-video") and not is_video_model("org/tiny-image")
    assert not is_video_model("org/not-downloaded")
    out = tmp_path / "rows.jsonl"
    assert main(["score", str(clip), "--model", "org/tiny-video", "--out", str(out), "--workers", "0"]) == 0
    (row,) = read_results(out)
    assert row["error"] is None and 0.0 <= row["video_quality"] <= 100.0
