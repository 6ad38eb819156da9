"""ViT-FIQA: arcface_torch's ViT module for module, save -> load, the scorer's rows, importing public weights."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from feval_core.errors import CheckpointError, ConfigError
from feval_core.fiqa.config import FIQAConfig
from feval_core.fiqa.labels import MarginHead, certainty_ratio, utility_from_raw
from feval_core.fiqa.scorer import FIQAScorer
from feval_core.fiqa.vit import ViTFIQA, crops_to_tensor
from feval_core.testing.fiqa import TINY_SHAPES
from tests.conftest import face_image

TINY = FIQAConfig(**TINY_SHAPES)


def _reference_vit(state: dict[str, torch.Tensor], x: torch.Tensor, depth: int, heads: int) -> torch.Tensor:
    """arcface_torch's VisionTransformer.forward (eval, layer norm), written out from its source."""
    F = torch.nn.functional
    b = x.shape[0]
    t = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=9)
    t = t.flatten(2).transpose(1, 2) + state["pos_embed"]
    d = t.shape[-1]
    for i in range(depth):
        p = f"blocks.{i}."
        h = F.layer_norm(t, (d,), state[p + "norm1.weight"], state[p + "norm1.bias"])
        qkv = (h @ state[p + "attn.qkv.weight"].T).reshape(b, -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        attn = ((qkv[0] @ qkv[1].transpose(-2, -1)) * (d // heads) ** -0.5).softmax(-1)
        h = (attn @ qkv[2]).transpose(1, 2).reshape(b, -1, d)
        t = t + F.linear(h, state[p + "attn.proj.weight"], state[p + "attn.proj.bias"])
        h = F.layer_norm(t, (d,), state[p + "norm2.weight"], state[p + "norm2.bias"])
        h = F.linear(F.relu6(F.linear(h, state[p + "mlp.fc1.weight"], state[p + "mlp.fc1.bias"])),
                     state[p + "mlp.fc2.weight"], state[p + "mlp.fc2.bias"])
        t = t + h
    t = F.layer_norm(t, (d,), state["norm.weight"], state["norm.bias"]).reshape(b, -1)

    def bn(v: torch.Tensor, k: str) -> torch.Tensor:
        return F.batch_norm(v, state[k + ".running_mean"], state[k + ".running_var"], state[k + ".weight"],
                            state[k + ".bias"], eps=2e-5)

    return bn(bn(t @ state["feature.0.weight"].T, "feature.1") @ state["feature.2.weight"].T, "feature.3")


def _arcface_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with arcface_torch's ViT keys (what `torch.save(backbone.state_dict())` writes)."""
    torch.manual_seed(seed)
    vit = ViTFIQA(TINY).vit
    with torch.no_grad():
        for name, buf in vit.named_buffers():
            if "running_var" in name:
                buf.uniform_(0.5, 2.0)
            elif "running_mean" in name:
                buf.normal_(0, 0.1)
    return {k: v.clone() for k, v in vit.state_dict().items()}


def test_the_recognizer_is_arcface_torchs_vit_and_the_quality_token_can_leave_it_untouched() -> None:
    state = _arcface_state()
    x = crops_to_tensor(np.stack([face_image(0, 112), face_image(1, 112)]))
    reference = _reference_vit(state, x, TINY.depth, TINY.num_heads)
    for see, close in ((False, True), (True, False)):
        model = ViTFIQA(FIQAConfig(**TINY_SHAPES, patches_see_quality=see)).eval()
        model.vit.load_state_dict(state)
        emb, quality = model(x)
        assert quality.shape == (2,)
        assert torch.allclose(emb, reference, atol=1e-4) == close  # the paper's global attention changes them


def test_save_then_load_gives_identical_utility(tiny_fiqa: Path, tmp_path: Path) -> None:
    scorer = FIQAScorer.from_pretrained(tiny_fiqa, device="cpu")
    images = [face_image(s) for s in range(4)]
    first = scorer.score(images)
    scorer.model.save_pretrained(tmp_path / "copy")
    import shutil

    shutil.copytree(tiny_fiqa / "face_pack", tmp_path / "copy" / "face_pack")
    again = FIQAScorer.from_pretrained(tmp_path / "copy", device="cpu").score(images)
    assert torch.equal(first.utility, again.utility) and torch.isfinite(first.utility).all()
    assert ((first.utility >= 0) & (first.utility <= 100)).all()
    assert len(set(first.utility.tolist())) > 1, "utility depends on the face"


def test_rows_no_face_is_nan_with_a_reason_and_a_bad_file_is_an_error_row(tiny_fiqa: Path, tmp_path: Path) -> None:
    bad = tmp_path / "truncated.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    res = FIQAScorer.from_pretrained(tiny_fiqa, device="cpu").score(
        [face_image(0), np.full((128, 128, 3), 20, np.uint8), str(bad), face_image(1)])
    rows = res.to_records()
    assert rows[0]["utility"] is not None and rows[3]["utility"] is not None
    assert rows[1]["utility"] is None and rows[1]["faces"] == 0 and "no face" in rows[1]["warnings"][0]
    assert rows[2]["utility"] is None and rows[2]["error"] and rows[2]["faces"] is None
    assert math.isnan(float(res.utility[1])) and math.isnan(float(res.utility[2]))


def test_utility_is_the_percentile_of_the_training_faces() -> None:
    quantiles = list(np.linspace(-1.0, 1.0, 101))
    u = utility_from_raw(np.array([-5.0, -1.0, 0.0, 0.5, 1.0, 7.0]), quantiles)
    assert u.tolist() == pytest.approx([0.0, 0.0, 50.0, 75.0, 100.0, 100.0], abs=1e-6)
    assert utility_from_raw(np.array([0.0]), None)[0] == pytest.approx(50.0)  # uncalibrated: 100 * sigmoid


def test_certainty_ratio_and_margins_by_hand() -> None:
    cos = torch.tensor([[0.8, 0.2, -0.5], [0.1, 0.3, 0.9]])
    cr = certainty_ratio(cos, torch.tensor([0, 1]))
    assert cr.tolist() == pytest.approx([0.8 / 1.2, 0.3 / 1.9])
    head = MarginHead(2, 2, "cosface", margin=0.35, scale=10.0)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    logits, c = head(torch.tensor([[1.0, 1.0]]), torch.tensor([0]))
    assert logits[0].tolist() == pytest.approx([10 * (math.sqrt(0.5) - 0.35), 10 * math.sqrt(0.5)])
    head.kind, head.margin = "arcface", 0.5
    logits, _ = head(torch.tensor([[1.0, 1.0]]), torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(10 * math.cos(math.pi / 4 + 0.5))


def test_import_converts_an_arcface_torch_state_dict_and_refuses_pickled_code(tmp_path: Path) -> None:
    from feval_core.fiqa.importer import import_arcface_vit

    state = _arcface_state(1)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "vit.pth")
    out = import_arcface_vit(tmp_path / "vit.pth", tmp_path / "imported", num_heads=TINY.num_heads)
    assert sorted(p.name for p in out.iterdir()) == ["fiqa_config.json", "model.safetensors"]
    model = ViTFIQA.from_pretrained(out)
    assert (model.config.embed_dim, model.config.depth, model.config.num_patches, model.config.label) == \
        (32, 2, 144, "none") and model.config.utility_quantiles is None
    x = crops_to_tensor(face_image(3, 112)[None])
    model.config.patches_see_quality = False
    assert torch.allclose(model(x)[0], _reference_vit(state, x, 2, 2), atol=1e-4)

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"x": Payload()}))
    with pytest.raises(CheckpointError, match="weights_only"):
        import_arcface_vit(tmp_path / "evil.pt", tmp_path / "no")
    torch.save({"patch_embed.proj.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="arcface_torch ViT"):
        import_arcface_vit(tmp_path / "other.pt", tmp_path / "no")


def test_model_folders_are_checked_before_loading(tiny_fiqa: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_fiqa, bad)
    (bad / "extra.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="pickle"):
        ViTFIQA.from_pretrained(bad)
    (bad / "extra.pt").unlink()
    (bad / "fiqa_config.json").write_text('{"embed_dim": 30, "num_heads": 4}')
    with pytest.raises(ConfigError, match="divisible"):
        ViTFIQA.from_pretrained(bad)
    (bad / "fiqa_config.json").write_text('{"face": {"pack": "tiny_face", "root": "../../elsewhere"}}')
    with pytest.raises(ConfigError, match=r"'\.\.'"):
        ViTFIQA.from_pretrained(bad)
