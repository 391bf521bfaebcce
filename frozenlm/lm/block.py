"""One transformer block, configurable to the LLaMA, OPT, GPT-2 and BERT layouts.

Parameter names are canonical across families (attn.q/k/v/o, attn_norm, ffn.gate/up/down,
ffn_norm) so that every checkpoint reader maps its own key names onto one module.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import BlockConfig

ACTIVATIONS = {
    "silu": F.silu,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 (as LLaMA does); `weight=False` gives the unit-weight norm."""

    def __init__(self, dim: int, eps: float = 1e-6, weight: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if weight else None

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        # Cast back before the weight multiply, matching the reference so bf16 results agree.
        y = xf.to(dtype)
        return y * self.weight if self.weight is not None else y


def rope_cos_sin(n: int, head_dim: int, theta: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """HF-layout rotary tables (n, head_dim) for positions 0..n-1."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(n, device=device, dtype=torch.float32), inv)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, N, hd) by the HF `rotate_half` convention."""
    x1, x2 = x.chunk(2, dim=-1)
    rot = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rot.float() * sin).to(x.dtype)


class Attention(nn.Module):
    """Multi-head / grouped-query self-attention through `scaled_dot_product_attention`."""

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q = nn.Linear(cfg.dim, self.n_heads * self.hd, bias=cfg.qkv_bias)
        self.k = nn.Linear(cfg.dim, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.v = nn.Linear(cfg.dim, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.o = nn.Linear(self.n_heads * self.hd, cfg.dim, bias=cfg.out_bias)

    def qkv(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Project to (B, H, N, hd) queries and (B, H_kv, N, hd) keys/values, rotated if `rope`."""
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.n_heads, self.hd).transpose(1, 2)
        k = self.k(x).view(b, n, self.n_kv, self.hd).transpose(1, 2)
        v = self.v(x).view(b, n, self.n_kv, self.hd).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v

    def forward(self, x: Tensor, mask: Tensor | None = None, is_causal: bool = False,
                rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """`mask`: bool (B, 1, N, N), True = may attend; `is_causal` only when `mask` is None."""
        q, k, v = self.qkv(x, rope)
        if self.n_kv != self.n_heads:
            rep = self.n_heads // self.n_kv
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None)
        return self.o(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))

    def attention_probs(self, x: Tensor, mask: Tensor | None = None,
                        rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Softmax attention weights (B, H, N, N); slow path used only for analysis."""
        q, k, _ = self.qkv(x, rope)
        if self.n_kv != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
        s = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(self.hd)
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        return s.softmax(-1)


class MLP(nn.Module):
    """SwiGLU (gate * up -> down) when `cfg.gated`, else up -> act -> down."""

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.act = ACTIVATIONS[cfg.act]
        self.gate = nn.Linear(cfg.dim, cfg.ffn_dim, bias=cfg.mlp_bias) if cfg.gated else None
        self.up = nn.Linear(cfg.dim, cfg.ffn_dim, bias=cfg.mlp_bias)
        self.down = nn.Linear(cfg.ffn_dim, cfg.dim, bias=cfg.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate is not None:
            return self.down(self.act(self.gate(x)) * self.up(x))
        return self.down(self.act(self.up(x)))


def make_norm(cfg: BlockConfig) -> nn.Module:
    """The family's normalisation layer."""
    if cfg.norm == "rms":
        return RMSNorm(cfg.dim, cfg.norm_eps)
    return nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)


class Block(nn.Module):
    """A language-model transformer block.

    pre-norm:  h = x + Attn(attn_norm(x));  out = h + FFN(ffn_norm(h))
    post-norm: h = attn_norm(x + Attn(x));  out = ffn_norm(h + FFN(h))
    `attn_half` is an identity whose forward hooks see h (used by the analysis tools).
    """

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.pre_norm = cfg.pre_norm
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg)
        self.ffn_norm = make_norm(cfg)
        self.ffn = MLP(cfg)
        self.attn_half = nn.Identity()

    def forward(self, x: Tensor, mask: Tensor | None = None, is_causal: bool = False,
                rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if self.pre_norm:
            h = self.attn_half(x + self.attn(self.attn_norm(x), mask, is_causal, rope))
            return h + self.ffn(self.ffn_norm(h))
        h = self.attn_half(self.attn_norm(x + self.attn(x, mask, is_causal, rope)))
        return self.ffn_norm(h + self.ffn(h))


def init_random_(block: nn.Module, std: float = 0.02) -> None:
    """Language-model style random init: N(0, std) weights, zero biases, unit norms."""
    for m in block.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, RMSNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
