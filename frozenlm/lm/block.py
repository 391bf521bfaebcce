"""One transformer block, configurable to the LLaMA, OPT, GPT-2 and BERT layouts.

Parameter names are canonical across families (attn.q/k/v/o, attn_norm, ffn.gate/up/down,
ffn_norm) so that every checkpoint reader maps its own key names onto one module.
"""
from __future__ import annotations

import math
from typing import Any

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


class _UpcastLinear(torch.autograd.Function):
    """y = x W^T + b with a frozen W stored in lower precision and used in x's dtype.

    Saving the stored W (not its upcast copy) for backward is the point: autograd would
    otherwise keep a full-precision copy of every frozen matrix alive until backward.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        ctx.save_for_backward(w)
        return F.linear(x, w.to(x.dtype), None if b is None else b.to(x.dtype))

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        (w,) = ctx.saved_tensors
        return g @ w.to(g.dtype), None, None


def linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """x W^T + b with W (and b) possibly stored in a lower precision than x: compute runs in x's dtype
    (or the autocast dtype), so bf16 storage only saves memory and works where bf16 is not native."""
    if w.dtype == x.dtype or torch.is_autocast_enabled(x.device.type):
        return F.linear(x, w, b)
    if w.requires_grad or (b is not None and b.requires_grad):
        return F.linear(x, w.to(x.dtype), None if b is None else b.to(x.dtype))
    return _UpcastLinear.apply(x, w, b)


class Linear(nn.Linear):
    """nn.Linear whose (frozen) weights may be stored in a lower precision than the activations."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


class _Packed(nn.Module):
    """Base of modules whose sibling projections (q/k/v, gate/up) read the same input.

    After every move (`.to()`, `.cuda()`, loading, all of which go through `_apply`) their weights
    are laid out as consecutive slices of one tensor, so when they are frozen a single larger GEMM
    computes all of them: exact, with the same state-dict keys, values and digests (the parameters
    are views). Trainable or re-assigned weights fall back to one GEMM per projection.
    """

    _pack_names: tuple[str, ...] = ()

    def _apply(self, fn: Any, recurse: bool = True) -> "_Packed":
        out = super()._apply(fn, recurse)
        self.pack_()
        return out

    def _projections(self) -> list[nn.Linear]:
        return [getattr(self, n) for n in self._pack_names if getattr(self, n, None) is not None]

    def pack_(self) -> None:
        """Re-lay the projections' weights (and biases) out as slices of one tensor each."""
        mods = self._projections()
        if len(mods) < 2 or any(m.weight.is_meta for m in mods):
            return
        for attr in ("weight", "bias"):
            ps = [getattr(m, attr) for m in mods]
            if any(p is None for p in ps) or len({(p.dtype, p.device) for p in ps}) != 1 or _consecutive(ps):
                continue
            with torch.no_grad():
                flat = torch.cat([p.detach().reshape(-1) for p in ps])
            start = 0
            for p in ps:
                p.data = flat[start:start + p.numel()].view(p.shape)
                start += p.numel()

    def fused(self, x: Tensor) -> list[Tensor] | None:
        """Each projection of ``x``, from one GEMM, if all of them are frozen and packed; else None."""
        mods = self._projections()
        ws = [m.weight for m in mods]
        if len(mods) < 2 or any(w.requires_grad for w in ws) or not _consecutive(ws):
            return None
        bs = [m.bias for m in mods]
        if any(b is not None for b in bs) and (any(b is None or b.requires_grad for b in bs) or not _consecutive(bs)):
            return None
        w = _joined(ws)
        b = _joined(bs) if bs[0] is not None else None
        return list(linear(x, w, b).split([t.shape[0] for t in ws], dim=-1))


def _consecutive(ts: list[Tensor]) -> bool:
    """True when the tensors are contiguous, of one dtype, and follow each other in one storage."""
    if not all(t.is_contiguous() and t.dtype == ts[0].dtype for t in ts):
        return False
    ptr = ts[0].untyped_storage().data_ptr()
    if any(t.untyped_storage().data_ptr() != ptr for t in ts):
        return False
    return all(a.data_ptr() + a.numel() * a.element_size() == b.data_ptr() for a, b in zip(ts, ts[1:]))


def _joined(ts: list[Tensor]) -> Tensor:
    """The tensor spanning consecutive slices ``ts`` (checked by `_consecutive`), without a copy."""
    first = ts[0]
    rows = sum(t.shape[0] for t in ts)
    shape = (rows, *first.shape[1:])
    stride = first.stride() if first.dim() > 1 else (1,)
    return first.as_strided(shape, stride, first.storage_offset())


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm that accepts parameters stored in another dtype than its input."""

    def forward(self, x: Tensor) -> Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.layer_norm(x, self.normalized_shape, w, b, self.eps)


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
        return y * self.weight.to(dtype) if self.weight is not None else y


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, N, hd) by the HF `rotate_half` convention."""
    x1, x2 = x.chunk(2, dim=-1)
    rot = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rot.float() * sin).to(x.dtype)


ATTN_IMPLS = ("sdpa", "math")


class Attention(_Packed):
    """Multi-head / grouped-query self-attention, optionally with QK-norm, another score scale
    (`cfg.query_scale`) and logit soft-capping (`cfg.attn_softcap`).

    impl "sdpa" (default) uses `scaled_dot_product_attention` (fused kernels: no N x N matrix is
    kept for backward); "math" is the eager softmax(QK^T/sqrt(d))V the released code uses,
    kept for benchmarks and as a reference. Soft-capping always runs "math" (no fused kernel has it).
    """

    _pack_names = ("q", "k", "v")

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.impl = "sdpa"
        self.scale = (cfg.query_scale or cfg.head_dim) ** -0.5
        self.softcap = cfg.attn_softcap
        self.q = Linear(cfg.dim, self.n_heads * self.hd, bias=cfg.qkv_bias)
        self.k = Linear(cfg.dim, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.v = Linear(cfg.dim, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.o = Linear(self.n_heads * self.hd, cfg.dim, bias=cfg.out_bias)
        self.q_norm = RMSNorm(self.hd, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.hd, cfg.norm_eps) if cfg.qk_norm else None

    def qkv(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Project to (B, H, N, hd) queries and (B, H_kv, N, hd) keys/values, rotated if `rope`."""
        b, n, _ = x.shape
        q, k, v = self.fused(x) or (self.q(x), self.k(x), self.v(x))
        q = q.reshape(b, n, self.n_heads, self.hd).transpose(1, 2)
        k = k.reshape(b, n, self.n_kv, self.hd).transpose(1, 2)
        v = v.reshape(b, n, self.n_kv, self.hd).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v

    def forward(self, x: Tensor, mask: Tensor | None = None, is_causal: bool = False,
                rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """`mask`: bool (B, 1, N, N), True = may attend; `is_causal` only when `mask` is None."""
        q, k, v = self.qkv(x, rope)
        gqa = self.n_kv != self.n_heads
        if self.impl == "math" or self.softcap is not None:
            if gqa:
                rep = self.n_heads // self.n_kv
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            out = self._math(q, k, v, mask, is_causal)
        else:
            # enable_gqa shares each K/V head across its query group inside the kernel instead of
            # materialising repeated copies (measured 1.3-1.7x faster attention on CPU for SmolLM2).
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
                                                 enable_gqa=gqa, scale=self.scale)
        return self.o(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))

    def scores(self, q: Tensor, k: Tensor, mask: Tensor | None, is_causal: bool = False) -> Tensor:
        """Masked attention logits (B, H, N, N): scaled, soft-capped, -inf where masked."""
        s = (q @ k.transpose(-1, -2)) * self.scale
        if self.softcap is not None:
            s = torch.tanh(s / self.softcap) * self.softcap
        if mask is None and is_causal:
            n = q.shape[-2]
            mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        return s if mask is None else s.masked_fill(~mask, float("-inf"))

    def _math(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor:
        """Eager attention: materialises the (B, H, N, N) scores and keeps them for backward."""
        return self.scores(q, k, mask, is_causal).softmax(-1) @ v

    def attention_probs(self, x: Tensor, mask: Tensor | None = None,
                        rope: tuple[Tensor, Tensor] | None = None, is_causal: bool = False) -> Tensor:
        """Softmax attention weights (B, H, N, N); slow path used only for analysis."""
        q, k, _ = self.qkv(x, rope)
        if self.n_kv != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
        return self.scores(q.float(), k.float(), mask, is_causal).softmax(-1)


class MLP(_Packed):
    """SwiGLU (gate * up -> down) when `cfg.gated`, else up -> act -> down."""

    _pack_names = ("gate", "up")

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.act = ACTIVATIONS[cfg.act]
        self.gate = Linear(cfg.dim, cfg.ffn_dim, bias=cfg.mlp_bias) if cfg.gated else None
        self.up = Linear(cfg.dim, cfg.ffn_dim, bias=cfg.mlp_bias)
        self.down = Linear(cfg.ffn_dim, cfg.dim, bias=cfg.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate is not None:
            gate, up = self.fused(x) or (self.gate(x), self.up(x))
            return self.down(self.act(gate) * up)
        return self.down(self.act(self.up(x)))


def make_norm(cfg: BlockConfig) -> nn.Module:
    """The family's normalisation layer."""
    if cfg.norm == "rms":
        return RMSNorm(cfg.dim, cfg.norm_eps)
    return LayerNorm(cfg.dim, eps=cfg.norm_eps)


class Block(nn.Module):
    """A language-model transformer block.

    pre-norm:  h = x + Attn(attn_norm(x));  out = h + FFN(ffn_norm(h))
               (with `cfg.post_norms`, Gemma's: h = x + attn_post_norm(Attn(...)), likewise the FFN)
    post-norm: h = attn_norm(x + Attn(x));  out = ffn_norm(h + FFN(h))
    `attn_half` is an identity whose forward hooks see h (used by the analysis tools).
    `window` / `use_rope` / `rope_cfg` record what the source layer does under the stack's causal / RoPE modes
    (set by BlockStack; the stack builds the matching mask and passes RoPE only where used).
    """

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.window: int | None = None
        self.use_rope = False
        self.rope_cfg = cfg  # whose rope_theta / scaling this layer rotates with (BlockStack sets it)
        self.pre_norm = cfg.pre_norm
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg)
        self.ffn_norm = make_norm(cfg)
        self.ffn = MLP(cfg)
        self.attn_post_norm = make_norm(cfg) if cfg.post_norms else nn.Identity()
        self.ffn_post_norm = make_norm(cfg) if cfg.post_norms else nn.Identity()
        self.attn_half = nn.Identity()

    def forward(self, x: Tensor, mask: Tensor | None = None, is_causal: bool = False,
                rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if self.pre_norm:
            h = self.attn_half(x + self.attn_post_norm(self.attn(self.attn_norm(x), mask, is_causal, rope)))
            return h + self.ffn_post_norm(self.ffn(self.ffn_norm(h)))
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
