"""Analytic FLOP counts (one multiply-add = 2 FLOPs; only matmuls are counted, as is customary).

For one block on N tokens of width d with H query heads, H_kv key/value heads of size hd and an
FFN of width f (SwiGLU: 3 matrices; otherwise 2):
    projections  2*N*d*(2*H*hd + 2*H_kv*hd)        q, k, v, o
    attention    4*N^2*H*hd                        QK^T and PV (bidirectional: every pair)
    ffn          2*N*d*f*(3 if gated else 2)
Backward costs 2x the forward of every matmul whose weight is trained (grad wrt input and wrt
weight) but only 1x for a frozen weight (grad wrt input only); the attention core has no
weights, its backward is 2x its forward (dQ,dK from dS; dP,dV from dO).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..lm.config import BlockConfig


@dataclass
class BlockFlops:
    """FLOPs of one block for a batch: forward split into weight matmuls and the attention core."""

    linear: float
    attention: float

    @property
    def forward(self) -> float:
        """Forward FLOPs."""
        return self.linear + self.attention

    def train(self, frozen: bool) -> float:
        """Forward + backward FLOPs; a frozen block needs no weight gradients."""
        return self.forward + (1 if frozen else 2) * self.linear + 2 * self.attention


def block_flops(cfg: BlockConfig, n_tokens: int, batch: int = 1) -> BlockFlops:
    """Matmul FLOPs of one block of `cfg` on `batch` sequences of `n_tokens` tokens."""
    d, hd, h, hkv = cfg.dim, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    per_token = 2 * d * (2 * h * hd + 2 * hkv * hd) + 2 * d * cfg.ffn_dim * (3 if cfg.gated else 2)
    attention = 4 * n_tokens ** 2 * h * hd
    return BlockFlops(linear=float(batch * n_tokens * per_token), attention=float(batch * attention))


def sandwich_flops(in_dim: int, cfg: BlockConfig, n_tokens: int, batch: int = 1, n_blocks: int = 1,
                   train: bool = False, frozen: bool = True) -> float:
    """FLOPs of a whole LMLayer: F_L1 and F_L2 (trainable) around `n_blocks` blocks."""
    adapters = 2 * 2 * batch * n_tokens * in_dim * cfg.dim
    blk = block_flops(cfg, n_tokens, batch)
    if not train:
        return adapters + n_blocks * blk.forward
    # F_L1's input gradient is only needed when something trainable sits below it; count it (a
    # visual encoder always does), so the adapters cost 3x their forward.
    return 3 * adapters + n_blocks * blk.train(frozen)


def vit_flops(vit: nn.Module, batch: int = 1, train: bool = False) -> float:
    """Matmul FLOPs of a timm VisionTransformer (patch embedding, blocks, head) on `batch` images.

    Training counts 3x the forward everywhere (all weights trained) except the patch embedding,
    whose input (the image) needs no gradient: 2x.
    """
    pe = vit.patch_embed
    n = pe.num_patches + getattr(vit, "num_prefix_tokens", 1)
    conv = pe.proj
    patch = 2 * pe.num_patches * conv.in_channels * conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    blocks = 0.0
    for blk in vit.blocks:
        d = blk.attn.qkv.in_features
        hidden = blk.mlp.fc1.out_features
        blocks += 2 * n * d * 4 * d + 4 * n * n * d + 2 * n * d * hidden * 2
    head = 2 * vit.head.in_features * vit.head.out_features if hasattr(vit.head, "in_features") else 0
    fwd_rest = blocks + head
    return float(batch * ((2 if train else 1) * patch + (3 if train else 1) * fwd_rest))
