"""ViT-FIQA in torch: arcface_torch's face-recognition ViT plus a learnable quality token and a quality head.

:class:`FaceViT` keeps arcface_torch's module names and shapes (``patch_embed.proj``, ``pos_embed``, ``blocks.N``,
``norm``, ``feature``, ``mask_token``), so a public ``vit_t``/``vit_s``/``vit_b``/``vit_l`` state dict loads into it
as is (:mod:`.importer`). :class:`ViTFIQA` appends the quality token to the patch tokens, runs the whole sequence
through the encoder, reads the identity embedding from the patch tokens (the recognizer's ``feature`` head) and the
raw quality from the quality token. Saved as ``fiqa_config.json`` + ``model.safetensors``; nothing is unpickled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from .config import FIQA_WEIGHTS_NAME, FIQAConfig

__all__ = ["FaceViT", "ViTFIQA", "crops_to_tensor"]


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.ReLU6(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0].float(), qkv[1].float(), qkv[2].float()  # attention in fp32, as arcface_torch does
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, d).to(x.dtype))


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch of a whole sample with probability ``p`` (training only)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.ndim - 1)), device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"ViT-FIQA takes aligned {self.img_size}x{self.img_size} face crops, got "
                             f"{tuple(x.shape[-2:])}; align faces with the face pack's 5 landmarks first")
        return self.proj(x).flatten(2).transpose(1, 2)


class FaceViT(nn.Module):
    """arcface_torch's ``VisionTransformer`` (layer-norm variant), module for module."""

    def __init__(self, config: FIQAConfig, drop_path_rate: float = 0.0, mask_ratio: float = 0.0) -> None:
        super().__init__()
        c = config
        self.num_patches, self.embed_dim, self.mask_ratio = c.num_patches, c.embed_dim, mask_ratio
        self.patch_embed = PatchEmbed(c.img_size, c.patch_size, c.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_patches, c.embed_dim))
        rates = torch.linspace(0, drop_path_rate, c.depth).tolist()
        self.blocks = nn.ModuleList(Block(c.embed_dim, c.num_heads, c.mlp_ratio, c.qkv_bias, r) for r in rates)
        self.norm = nn.LayerNorm(c.embed_dim)
        self.feature = nn.Sequential(
            nn.Linear(c.embed_dim * c.num_patches, c.embed_dim, bias=False),
            nn.BatchNorm1d(c.embed_dim, eps=2e-5),
            nn.Linear(c.embed_dim, c.num_features, bias=False),
            nn.BatchNorm1d(c.num_features, eps=2e-5),
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_init_weights)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class ViTFIQA(nn.Module):
    """The recognizer ``vit`` plus ``quality_token`` and ``quality_head``; ``forward`` gives (embedding, quality)."""

    def __init__(self, config: FIQAConfig, drop_path_rate: float = 0.0, mask_ratio: float = 0.0) -> None:
        super().__init__()
        self.config = config
        self.vit = FaceViT(config, drop_path_rate, mask_ratio)
        self.quality_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        nn.init.trunc_normal_(self.quality_token, std=0.02)
        h = config.quality_hidden
        self.quality_head = (nn.Linear(config.embed_dim, 1) if h == 0 else
                             nn.Sequential(nn.Linear(config.embed_dim, h), nn.GELU(), nn.Linear(h, 1)))
        self.quality_head.apply(_init_weights)

    def recognizer_parameters(self) -> list[nn.Parameter]:
        """The face-recognition ViT's own weights (frozen with ``freeze_recognizer``)."""
        return list(self.vit.parameters())

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, 3, 112, 112]`` crops in [-1, 1] -> (identity embedding ``[B, num_features]``, raw quality ``[B]``)."""
        vit = self.vit
        b = pixels.shape[0]
        x = vit.patch_embed(pixels) + vit.pos_embed
        restore = None
        if self.training and vit.mask_ratio > 0:
            x, restore = _random_masking(x, vit.mask_ratio)
        n = x.shape[1]
        x = torch.cat([x, self.quality_token.expand(b, -1, -1).to(x.dtype)], dim=1)
        mask = None
        if not self.config.patches_see_quality:
            mask = torch.ones(n + 1, n + 1, dtype=torch.bool, device=x.device)
            mask[:n, n] = False  # patches do not attend to the quality token; it attends to everything
        for block in vit.blocks:
            x = block(x, mask)
        x = vit.norm(x.float())
        patches, quality = x[:, :n], x[:, n]
        if restore is not None:
            filler = vit.mask_token.expand(b, vit.num_patches - n, -1).to(patches.dtype)
            patches = torch.gather(torch.cat([patches, filler], 1), 1,
                                   restore.unsqueeze(-1).expand(-1, -1, patches.shape[2]))
        embedding = vit.feature(patches.reshape(b, vit.num_patches * vit.embed_dim))
        return embedding, self.quality_head(quality).squeeze(-1)

    # -- files --------------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``fiqa_config.json`` and ``model.safetensors`` into ``folder``."""
        from safetensors.torch import save_file

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(out / FIQA_WEIGHTS_NAME), metadata={"format": "pt"})
        self.config.save(out)
        return out

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> ViTFIQA:
        """Load a saved model (safetensors only; the folder is checked for pickles and links out first)."""
        from safetensors.torch import load_file

        from ..model.checkpoint import check_checkpoint_tree

        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise CheckpointError(f"{folder} is not a folder; pass the ViT-FIQA model folder (it holds "
                                  "fiqa_config.json and model.safetensors)")
        check_checkpoint_tree(folder)
        config = FIQAConfig.load(folder)
        path = folder / FIQA_WEIGHTS_NAME
        if not path.is_file():
            raise CheckpointError(f"{folder} has no {FIQA_WEIGHTS_NAME}; re-save the model with save_pretrained")
        model = cls(config)
        state = load_file(str(path))
        missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
        if missing or unexpected:
            raise CheckpointError(f"{path} does not match {folder / 'fiqa_config.json'}: missing "
                                  f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}; re-save the model")
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"{path} does not fit its config ({exc}); re-save the model") from exc
        return model.to(device).eval()


def _random_masking(x: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep a random ``1 - ratio`` of the patch tokens of each sample (arcface_torch's training-time masking)."""
    b, n, d = x.shape
    keep = int(n * (1 - ratio))
    order = torch.argsort(torch.rand(b, n, device=x.device), dim=1)
    restore = torch.argsort(order, dim=1)
    return torch.gather(x, 1, order[:, :keep].unsqueeze(-1).expand(-1, -1, d)), restore


def crops_to_tensor(crops: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """``[B, 112, 112, 3]`` uint8 RGB aligned crops -> ``[B, 3, 112, 112]`` float in [-1, 1] (arcface_torch's input)."""
    t = torch.as_tensor(np.asarray(crops) if not isinstance(crops, torch.Tensor) else crops)
    if t.ndim != 4 or t.shape[-1] != 3 or t.dtype != torch.uint8:
        raise ValueError(f"crops must be [B, H, W, 3] uint8 RGB, got {tuple(t.shape)} {t.dtype}")
    return ((t.to(device).permute(0, 3, 1, 2).float() / 255.0) - 0.5) / 0.5
