"""Tiny video parts for tests and smoke runs, offline: a VideoMAE temporal encoder and a Segformer portrait
segmenter built from configs (real classes, random seeded weights), clips written with PyAV, and
:func:`make_tiny_video_checkpoint` (``feval make-tiny --video``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

TINY_VIDEO_NOTICE = ("tiny random-weight VIDEO checkpoint for tests and smoke runs: its video_quality scores are "
                     "MEANINGLESS. Train a real one with `feval video train`.")


def build_tiny_temporal(out: str | Path, *, seed: int = 0, num_frames: int = 8, image_size: int = 32,
                        hidden: int = 32) -> Path:
    """A tiny ``VideoMAEModel`` (tubelets of 2 frames, 8x8 patches) saved with ``save_pretrained``."""
    from transformers import VideoMAEConfig, VideoMAEModel

    torch.manual_seed(seed)
    cfg = VideoMAEConfig(image_size=image_size, patch_size=8, num_frames=num_frames, tubelet_size=2,
                         hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, intermediate_size=2 * hidden,
                         use_mean_pooling=False)
    out = Path(out)
    VideoMAEModel(cfg).eval().save_pretrained(out)
    return out


def build_tiny_portrait(out: str | Path, *, seed: int = 0) -> Path:
    """A tiny ``SegformerForSemanticSegmentation`` with labels ``background`` and ``person``."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(seed)
    cfg = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                          patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 1], mlp_ratios=[2, 2],
                          decoder_hidden_size=16, num_labels=2, id2label={0: "background", 1: "person"},
                          label2id={"background": 0, "person": 1})
    out = Path(out)
    SegformerForSemanticSegmentation(cfg).eval().save_pretrained(out)
    return out


def write_clip(path: str | Path, frames: np.ndarray, *, fps: int = 8, codec: str | None = None) -> Path:
    """Write ``[T, H, W, 3]`` uint8 frames as a video file (mp4/mkv/mov: h264, webm: vp9, gif: gif)."""
    import av

    path = Path(path)
    ext = path.suffix.lower()
    codec = codec or {".webm": "libvpx-vp9", ".gif": "gif"}.get(ext, "libx264")
    pix = {"gif": "rgb8"}.get(codec, "yuv420p")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def moving_face_frames(n: int = 16, size: int = 128, *, seed: int = 0, step: float = 1.0) -> np.ndarray:
    """A tiny-pack face drifting slowly to the right on a dark background."""
    from .facepack import draw_tiny_face

    out = np.empty((n, size, size, 3), np.uint8)
    q = size // 4
    for t in range(n):
        dx = int(round(t * step)) % q
        out[t] = draw_tiny_face(np.full((size, size, 3), 20, np.uint8), (q - q // 2 + dx, q, 3 * q - q // 2 + dx,
                                                                           3 * q), seed=seed)
    return out


def make_tiny_video_checkpoint(out_dir: str | Path, *, seed: int = 0, family: str = "qwen2_5_vl",
                               samples: bool = True) -> Path:
    """A complete tiny video checkpoint: the tiny image parts (backbone, face pack), a tiny VideoMAE and Segformer,
    random projectors and expert, and ``samples/`` (a few short clips) when asked."""
    from ..model.config import FaceEncoderConfig, FEvalConfig
    from ..video.checkpoint import build_video_model, load_encoders, save_video_checkpoint
    from ..video.config import VideoConfig
    from .facepack import write_tiny_face_pack
    from .tiny import build_tiny_backbone

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    build_tiny_backbone(family, out / "backbone", seed=seed, image_size=56)
    write_tiny_face_pack(out / "face_pack", name="tiny_face", seed=seed)
    build_tiny_temporal(out / "temporal", seed=seed)
    build_tiny_portrait(out / "portrait", seed=seed)
    config = FEvalConfig(base_model="backbone", mode="trained", score_mode="mean", dims=("quality",),
                         num_face_tokens=1, lora_rank=4, lora_alpha=8, max_image_pixels=56 * 56,
                         face=FaceEncoderConfig(pack="tiny_face", root="face_pack", det_size=128, det_thresh=0.5))
    vconfig = VideoConfig(num_key_frames=4, num_clip_frames=8, temporal_tokens=2, portrait_size=64, frame_side=128)
    temporal, portrait = load_encoders(vconfig, out.resolve())
    torch.manual_seed(seed)
    model = build_video_model(config, vconfig, temporal, portrait, base_dir=out.resolve(), random_adapters=True)
    with torch.no_grad():  # random heads so that scores vary with the input
        for p in model.heads.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_video_checkpoint(model, out)
    if samples:
        write_video_samples(out / "samples", seed=seed)
    (out / "README.md").write_text(f"# tiny feval video checkpoint ({family})\n\n{TINY_VIDEO_NOTICE}\n\n"
                                   "`samples/` holds short clips with a face the tiny face pack detects.\n")
    logger.warning(TINY_VIDEO_NOTICE)
    return out


def write_video_samples(folder: str | Path, *, seed: int = 0) -> Path:
    """Three short clips: a steady face (mp4), the same face flickering (webm) and one with no face (gif)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    frames = moving_face_frames(16, 128, seed=seed)
    write_clip(out / "face.mp4", frames)
    flicker = np.clip(frames.astype(np.int16) + np.where(np.arange(16) % 2, 60, -10)[:, None, None, None], 0, 255)
    write_clip(out / "flicker.webm", flicker.astype(np.uint8))
    write_clip(out / "no_face.gif", np.full((8, 64, 64, 3), 30, np.uint8), fps=8)
    return out


TEMPORAL_FAULTS = ("flicker", "jitter", "drop", "repeat")
FRAME_FAULTS = ("blur", "noise")


def synthetic_clip(rng: np.random.Generator, *, n: int = 8, size: int = 128, identities: int = 4,
                   temporal_prob: float = 0.7, frame_prob: float = 0.5, nuisance: bool = False
                   ) -> tuple[np.ndarray, float, dict[str, float]]:
    """One clip of a face drifting right, with at most one temporal fault (flicker, jitter, dropped or repeated
    frames) and one per-frame fault (blur, noise), each of random severity; MOS falls with both.

    ``nuisance``: every clip also gets a random speed, start position, exposure and flicker phase that do not change
    its MOS, so that a single frame's brightness or position says nothing about a temporal fault: only changes
    between frames do.

    Returns ``(frames [n, size, size, 3] uint8, mos, {fault: severity})``.
    """
    from PIL import Image, ImageFilter

    faults: dict[str, float] = {}
    if rng.random() < temporal_prob:
        faults[TEMPORAL_FAULTS[rng.integers(len(TEMPORAL_FAULTS))]] = float(rng.uniform(0.2, 1.0))
    if rng.random() < frame_prob:
        faults[FRAME_FAULTS[rng.integers(len(FRAME_FAULTS))]] = float(rng.uniform(0.2, 1.0))
    step, start, exposure, phase = 3.0, 0, 0.0, 0
    if nuisance:
        step, start = float(rng.uniform(1.5, 4.5)), int(rng.integers(0, 32))
        exposure, phase = float(rng.uniform(-35.0, 35.0)), int(rng.integers(2))
    times = np.arange(2 * n, dtype=np.float64)
    if "drop" in faults:  # frames missing: the motion jumps
        times = np.cumsum(np.where(rng.random(2 * n) < faults["drop"], 3.0, 1.0)) - 1
    if "repeat" in faults:  # frames repeated: the motion stalls
        times = np.cumsum(np.where(rng.random(2 * n) < faults["repeat"], 0.0, 1.0))
    times = times + start
    base = moving_face_frames(int(times[:n].max()) + 1, size, seed=int(rng.integers(identities)), step=step)
    frames = base[times[:n].astype(int)].astype(np.float32)
    if "flicker" in faults:
        frames += (np.where((np.arange(n) + phase) % 2, 1.0, -1.0) * 50 * faults["flicker"])[:, None, None, None]
    frames += exposure
    if "jitter" in faults:
        amp = int(round(2 + 8 * faults["jitter"]))
        for t in range(n):
            frames[t] = np.roll(frames[t], (int(rng.integers(-amp, amp + 1)), int(rng.integers(-amp, amp + 1))), (0, 1))
    if "blur" in faults:
        r = 0.5 + 2.5 * faults["blur"]
        frames = np.stack([np.asarray(Image.fromarray(f.clip(0, 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(r)), np.float32) for f in frames])
    if "noise" in faults:
        frames += rng.normal(0, 45 * faults["noise"], frames.shape)
    mos = 90.0 - 40.0 * sum(faults.values()) + float(rng.normal(0, 2.0))
    return frames.clip(0, 255).astype(np.uint8), float(np.clip(mos, 0, 100)), faults


def synthetic_video_set(count: int, *, seed: int = 0, **kwargs: object) -> list[tuple[np.ndarray, float, dict]]:
    rng = np.random.default_rng(seed)
    return [synthetic_clip(rng, **kwargs) for _ in range(count)]


def _write_vfr(path: Path, frames: np.ndarray) -> None:
    """An mkv whose frame intervals alternate between 40 and 120 ms (variable frame rate)."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        pts = 0
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts, vf.time_base = pts, Fraction(1, 1000)
            pts += 40 if i % 2 else 120
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _write_audio_only(path: Path) -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        s.layout = "mono"
        for i in range(8):
            fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            fr.sample_rate, fr.pts = 16000, i * 1024
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def write_bad_video_corpus(folder: str | Path) -> dict[str, str | None]:
    """Good clips in every container feval reads and bad ones of every kind it reports; returns file name ->
    a word its error must contain (None: it must score). "long" and "large" are bad only under the small limits of
    :data:`CORPUS_LIMITS`."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    frames = moving_face_frames(16, 128)
    expect: dict[str, str | None] = {}
    for ext in ("mp4", "webm", "mov", "mkv", "gif"):
        write_clip(out / f"good.{ext}", frames)
        expect[f"good.{ext}"] = None
    (out / "empty.mp4").write_bytes(b"")
    expect["empty.mp4"] = "empty"
    (out / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    expect["corrupt.mp4"] = "not a readable video"
    whole = (out / "good.mkv").read_bytes()
    (out / "truncated.mkv").write_bytes(whole[: 2 * len(whole) // 3])
    expect["truncated.mkv"] = "truncated"
    _write_audio_only(out / "audio_only.mp4")
    expect["audio_only.mp4"] = "no video stream"
    _write_vfr(out / "vfr.mkv", frames)
    expect["vfr.mkv"] = "variable frame rate"
    write_clip(out / "long.mp4", moving_face_frames(64, 64), fps=4)  # 16 s
    expect["long.mp4"] = "over the limit"
    write_clip(out / "large.mp4", np.zeros((4, 512, 512, 3), np.uint8))
    expect["large.mp4"] = "over the limit"
    return expect


CORPUS_LIMITS = {"max_seconds": 10.0, "max_pixels": 300 * 300}
"""Limits under which the corpus's ``long.mp4`` and ``large.mp4`` are refused (and the good clips are not)."""


LEARNING_BRANCHES = ("spatial", "temporal", "portrait")
"""Branches of the synthetic learning task (the tiny face pack sees no identity change in it: no face branch)."""


def prepare_video_learning_parts(root: str | Path, *, seed: int = 0) -> Path:
    """The tiny parts of the synthetic learning task under ``root``: a Qwen2.5-VL-class backbone with the wide random
    init of the image learning tasks, the tiny face pack, a tiny VideoMAE and a tiny Segformer."""
    from .facepack import write_tiny_face_pack
    from .tiny import build_tiny_backbone

    root = Path(root)
    build_tiny_backbone("qwen2_5_vl", root / "backbone", seed=seed, image_size=56, init_std=0.2)
    write_tiny_face_pack(root / "face", name="tiny_face", seed=seed)
    build_tiny_temporal(root / "temporal", seed=seed)
    build_tiny_portrait(root / "portrait", seed=seed)
    return root


def video_learning_config(root: str | Path, branches: tuple[str, ...] = LEARNING_BRANCHES, **overrides: object):
    """A :class:`~feval_core.video.train.VideoTrainConfig` for the synthetic task: the parts and the tiny sizes
    (2 key frames, 8 clip frames, LoRA rank 4 on every LLM linear) are given; schedule and learning rate are the
    defaults unless overridden."""
    from ..video.train import VideoTrainConfig
    from .synthetic import SYNTHETIC_LORA_TARGETS

    root = Path(root)
    kw: dict[str, object] = dict(
        base=str(root / "backbone"), temporal_model=str(root / "temporal"), portrait_model=str(root / "portrait"),
        branches=branches, num_key_frames=2, num_clip_frames=8, temporal_tokens=2, portrait_size=64, frame_side=128,
        max_image_pixels=56 * 56, lora_rank=4, lora_alpha=8, lora_targets=SYNTHETIC_LORA_TARGETS, batch_size=16)
    kw.update(overrides)
    return VideoTrainConfig(**kw)  # type: ignore[arg-type]


def temporal_only(faults: dict[str, float]) -> bool:
    """A clip whose MOS falls only with temporal faults (or none): the "temporal subset" of the learning task."""
    return not any(k in FRAME_FAULTS for k in faults)
