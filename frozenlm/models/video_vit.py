"""VideoMAE-style video ViT with an LMLayer after the last block (the paper's action-recognition model).

Tubelet Conv3d embedding, fixed sinusoidal position table, pre-LN blocks whose qkv has a q and a
v bias but no k bias, an LMLayer after the last block, mean pooling + fc_norm and a linear head
whose init is scaled down (VideoMAE's ``init_scale``). Parameter names follow VideoMAE's fine-tuning
model, so its public checkpoints load key for key (:func:`load_videomae_weights`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from timm.layers import DropPath, Mlp, trunc_normal_

from ..layer import LMLayer
from ..lm.readers.base import CheckpointError
from .registry import register_model
from .weights import LoadReport, apply_weights, match_weights, read_state_dict


def sinusoid_table(n_position: int, dim: int) -> Tensor:
    """VideoMAE's fixed position table (1, n_position, dim): sin on even channels, cos on odd."""
    pos = torch.arange(n_position, dtype=torch.float64)[:, None]
    rate = torch.pow(10000.0, 2 * (torch.arange(dim) // 2) / dim).double()
    table = pos / rate
    table[:, 0::2] = table[:, 0::2].sin()
    table[:, 1::2] = table[:, 1::2].cos()
    return table.float().unsqueeze(0)


class TubeletEmbed(nn.Module):
    """(B, C, T, H, W) -> (B, T/t * H/p * W/p, D) with one Conv3d of kernel = stride = (t, p, p)."""

    def __init__(self, img_size: int, patch_size: int, num_frames: int, tubelet: int, in_chans: int,
                 dim: int) -> None:
        super().__init__()
        if img_size % patch_size or num_frames % tubelet:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size} and num_frames "
                             f"{num_frames} a multiple of tubelet_size {tubelet}")
        self.img_size, self.patch_size, self.num_frames, self.tubelet = img_size, patch_size, num_frames, tubelet
        self.grid = (num_frames // tubelet, img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid[0] * self.grid[1] * self.grid[2]
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=(tubelet, patch_size, patch_size),
                              stride=(tubelet, patch_size, patch_size))

    def forward(self, x: Tensor) -> Tensor:
        """Clips (B, C, T, H, W) -> tokens (B, N, D), ordered time-major (t, h, w)."""
        want = (self.proj.in_channels, self.num_frames, self.img_size, self.img_size)
        if x.ndim != 5 or tuple(x.shape[1:]) != want:
            raise ValueError(f"video model expects clips of shape (B, C, T, H, W) = (B, {', '.join(map(str, want))}), "
                             f"got {tuple(x.shape)}; set data.num_frames / data.img_size to match the model")
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with VideoMAE's q/v biases (no k bias) through SDPA."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads, self.attn_drop = num_heads, attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D)."""
        b, n, d = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).view(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        # SDPA picks a memory-efficient kernel: no (N x N) matrix is kept for 1568-token clips on GPU.
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x)), with drop path."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D)."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VideoViTLM(nn.Module):
    """VideoMAE fine-tuning ViT whose tokens pass through an LMLayer after the last block.

    forward: clips (B, C, T, H, W) -> logits (B, num_classes). The LMLayer replaces the tokens
    (no residual unless it asks for one); the head reads fc_norm(mean over tokens).
    """

    def __init__(self, lm_layer: LMLayer | None = None, img_size: int = 224, patch_size: int = 16,
                 num_frames: int = 16, tubelet_size: int = 2, in_chans: int = 3, num_classes: int = 174,
                 embed_dim: int = 384, depth: int = 12, num_heads: int = 6, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 init_scale: float = 0.001, grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.num_classes, self.embed_dim = num_classes, embed_dim
        self.patch_embed = TubeletEmbed(img_size, patch_size, num_frames, tubelet_size, in_chans, embed_dim)
        # A buffer, not a parameter: fixed, and (as in VideoMAE) not part of the state dict.
        self.register_buffer("pos_embed", sinusoid_table(self.patch_embed.num_patches, embed_dim), persistent=False)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, dpr[i]) for i in range(depth))
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.grad_checkpointing = grad_checkpointing
        self.apply(_init_weights)  # before the LMLayer is attached: its (frozen) weights stay untouched
        self.lm_layer = lm_layer if lm_layer is not None else LMLayer(embed_dim, variant="none")
        if isinstance(self.head, nn.Linear):
            self.head.weight.data.mul_(init_scale)
            self.head.bias.data.mul_(init_scale)

    @property
    def num_layers(self) -> int:
        """Number of ViT blocks (for layer-wise LR decay)."""
        return len(self.blocks)

    def layer_id(self, name: str) -> int:
        """VideoMAE's layer index of a parameter: 0 = embeddings, i+1 = block i, depth+1 = the rest."""
        if name.startswith(("patch_embed", "pos_embed", "cls_token")):
            return 0
        m = re.match(r"blocks\.(\d+)\.", name)
        return int(m.group(1)) + 1 if m else self.num_layers + 1

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Names excluded from weight decay besides 1-D tensors (VideoMAE: pos_embed, cls_token)."""
        return {"pos_embed", "cls_token"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each ViT block in backward instead of storing its activations."""
        self.grad_checkpointing = enable

    def tokens(self, x: Tensor) -> Tensor:
        """Tubelet tokens + the fixed position table (B, N, D)."""
        t = self.patch_embed(x)
        return t + self.pos_embed.to(t.dtype)

    def forward_features(self, x: Tensor) -> Tensor:
        """Tokens after every block and the LMLayer (B, N, D)."""
        x = self.tokens(x)
        ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for blk in self.blocks:
            x = checkpoint(blk, x, use_reentrant=False) if ckpt else blk(x)
        return self.lm_layer(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """Tokens (B, N, D) -> logits: mean pool, fc_norm, dropout, head."""
        return self.head(self.head_drop(self.fc_norm(x.mean(1))))

    def forward(self, x: Tensor) -> Tensor:
        """Clips (B, C, T, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))


def _init_weights(m: nn.Module) -> None:
    # VideoMAE's init: trunc_normal(.02) linears with zero bias, unit LayerNorms.
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------- checkpoint loading

def load_videomae_weights(model: VideoViTLM, path: str | Path, verbose: bool = True) -> LoadReport:
    """Load a VideoMAE checkpoint (pre-trained encoder ``encoder.*`` or fine-tuned) into ``model``.

    Follows VideoMAE's fine-tuning script: strip ``encoder.``/``backbone.``, ignore the decoder,
    ``encoder_to_decoder`` and ``mask_token``, drop a head of another class count, ignore a stored
    ``pos_embed`` (the table here is fixed and sized for this model). Missing keys are allowed only
    in the head (fc_norm, head) and the LMLayer's trainable maps; anything else missing, or a shape
    mismatch in the backbone, raises :class:`CheckpointError` naming the keys.
    """
    sd, names, fixed = {}, {}, []
    for key, v in read_state_dict(path).items():
        k = key.removeprefix("encoder.").removeprefix("backbone.")
        if k == "pos_embed":
            fixed.append(f"{key} (fixed sinusoidal table rebuilt for this model)")
        else:
            sd[k], names[k] = v, key
    clean, report = match_weights(model, sd, path, ("head.",),
                                  "is it a VideoMAE of the same size, patch and tubelet?", names)
    report.dropped += fixed
    bad = [k for k in report.missing if not k.startswith(("fc_norm.", "head."))]  # a pre-trained encoder has no head
    if bad:
        raise CheckpointError(f"{path}: not a VideoMAE ViT checkpoint of this size; missing backbone keys: "
                              f"{bad[:10]}{' ...' if len(bad) > 10 else ''} ({len(bad)} in all). "
                              f"Unexpected keys in the file: {report.unexpected[:10]}")
    return apply_weights(model, clean, report, "videomae", path, verbose)


# ------------------------------------------------------------------------------- factories

VIDEO_VITS: dict[str, dict[str, Any]] = {
    # The paper's backbones (VideoMAE ViT-S/B, 16 frames, tubelet 2x16x16: 1568 tokens).
    "videomae_small_patch16_224": dict(img_size=224, patch_size=16, num_frames=16, tubelet_size=2,
                                       embed_dim=384, depth=12, num_heads=6),
    "videomae_base_patch16_224": dict(img_size=224, patch_size=16, num_frames=16, tubelet_size=2,
                                      embed_dim=768, depth=12, num_heads=12),
    # Offline defaults: 8 frames of 32x32 px; tubelet 4x8x8 -> 2 x 4 x 4 = 32 tokens, 2x8x8 -> 64.
    "video_vit_mini_t4p8_32": dict(img_size=32, patch_size=8, num_frames=8, tubelet_size=4,
                                   embed_dim=128, depth=4, num_heads=4),
    "video_vit_mini_t2p8_32": dict(img_size=32, patch_size=8, num_frames=8, tubelet_size=2,
                                   embed_dim=128, depth=4, num_heads=4),
}


def build_video_vit(name: str, lm: str | dict[str, Any] | LMLayer | None = None, num_classes: int = 174,
                    pretrained_path: str | Path | None = None, **kwargs: Any) -> VideoViTLM:
    """A :data:`VIDEO_VITS` backbone + LMLayer; ``pretrained_path`` = a local VideoMAE checkpoint.

    ``kwargs`` override the named architecture (img_size, num_frames, drop_path_rate, init_scale,
    grad_checkpointing...). The LMLayer adapters use PyTorch's default init, as the released
    video code does, unless ``lm`` says otherwise.
    """
    if name not in VIDEO_VITS:
        raise ValueError(f"unknown video model {name!r}; known: {sorted(VIDEO_VITS)}")
    args = {**VIDEO_VITS[name], **{k: v for k, v in kwargs.items() if v is not None}}
    lm_layer = LMLayer.from_spec(args["embed_dim"], lm, init="default")
    model = VideoViTLM(lm_layer=lm_layer, num_classes=num_classes, **args)
    if pretrained_path:
        load_videomae_weights(model, pretrained_path)
    return model


for _n in VIDEO_VITS:
    register_model(_n)(lambda _name=_n, **kw: build_video_vit(_name, **kw))
