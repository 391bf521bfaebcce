"""The baseline `frozenlm bench` compares against: the released research code's way of doing it.

An eager float32 LLaMA block (Meta layout, explicit matmul-softmax attention, K/V repeated for
GQA), the two linear maps and the unit RMSNorm around it, and a loader that reads the WHOLE
consolidated checkpoint into memory to keep one layer. Written plainly on purpose: it is the
yardstick, not something to use. Frozen weights have requires_grad False, as in the released code.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RefRMSNorm(nn.Module):
    """LLaMA RMSNorm (float32 math)."""

    def __init__(self, dim: int, eps: float, weight: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if weight else None

    def forward(self, x: Tensor) -> Tensor:
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        y = y.type_as(x)
        return y * self.weight if self.weight is not None else y


class RefAttention(nn.Module):
    """Meta-layout attention with an explicit (B, H, N, N) score matrix."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.hd = n_heads, n_kv_heads, dim // n_heads
        self.wq = nn.Linear(dim, n_heads * self.hd, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * self.hd, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * self.hd, bias=False)
        self.wo = nn.Linear(n_heads * self.hd, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q = self.wq(x).view(b, n, self.n_heads, self.hd).transpose(1, 2)
        k = self.wk(x).view(b, n, self.n_kv, self.hd).transpose(1, 2)
        v = self.wv(x).view(b, n, self.n_kv, self.hd).transpose(1, 2)
        rep = self.n_heads // self.n_kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.hd)
        scores = F.softmax(scores.float(), dim=-1).type_as(q)
        out = torch.matmul(scores, v).transpose(1, 2).contiguous().view(b, n, -1)
        return self.wo(out)


class RefFeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class RefLlamaBlock(nn.Module):
    """One LLaMA transformer block with Meta parameter names, no mask, no RoPE (as in the paper)."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, ffn_dim: int, eps: float) -> None:
        super().__init__()
        self.attention = RefAttention(dim, n_heads, n_kv_heads)
        self.feed_forward = RefFeedForward(dim, ffn_dim)
        self.attention_norm = RefRMSNorm(dim, eps)
        self.ffn_norm = RefRMSNorm(dim, eps)

    def forward(self, x: Tensor) -> Tensor:
        h = x + self.attention(self.attention_norm(x))
        return h + self.feed_forward(self.ffn_norm(h))


class RefSandwich(nn.Module):
    """mapper1 -> frozen block (fp32) -> unit RMSNorm -> mapper2."""

    def __init__(self, in_dim: int, block: RefLlamaBlock, dim: int, eps: float) -> None:
        super().__init__()
        self.llama_dim_mapper1 = nn.Linear(in_dim, dim, bias=False)
        self.llama = block
        self.norm = RefRMSNorm(dim, eps, weight=False)
        self.llama_dim_mapper2 = nn.Linear(dim, in_dim, bias=False)
        for p in self.llama.parameters():
            p.requires_grad = False

    def forward(self, x: Tensor) -> Tensor:
        return self.llama_dim_mapper2(self.norm(self.llama(self.llama_dim_mapper1(x))).float())


# canonical frozenlm names -> Meta names (used to copy weights for the parity check)
META_NAMES = {"attn.q": "attention.wq", "attn.k": "attention.wk", "attn.v": "attention.wv",
              "attn.o": "attention.wo", "ffn.gate": "feed_forward.w1", "ffn.up": "feed_forward.w3",
              "ffn.down": "feed_forward.w2", "attn_norm": "attention_norm", "ffn_norm": "ffn_norm"}


def reference_sandwich_like(lm_layer: nn.Module) -> RefSandwich:
    """A RefSandwich with the same shapes and (fp32 copies of the) weights as a frozenlm LMLayer."""
    cfg = lm_layer.blocks.cfg
    blk = RefLlamaBlock(cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim, cfg.norm_eps)
    src = lm_layer.blocks.layers[0].state_dict()
    state = {}
    for k, v in src.items():
        mod, leaf = k.rsplit(".", 1)
        state[f"{META_NAMES[mod]}.{leaf}"] = v.float()
    blk.load_state_dict(state)
    ref = RefSandwich(lm_layer.in_dim, blk, cfg.dim, lm_layer.norm.eps)
    ref.llama_dim_mapper1.weight.data.copy_(lm_layer.proj_in.weight)
    ref.llama_dim_mapper2.weight.data.copy_(lm_layer.proj_out.weight)
    return ref


def reference_load_layer(ckpt_dir: str | Path, layer: int) -> RefLlamaBlock:
    """What the released code does: torch.load the whole consolidated.00.pth, keep one layer."""
    import json
    ckpt_dir = Path(ckpt_dir)
    params = json.loads((ckpt_dir / "params.json").read_text())
    state = torch.load(ckpt_dir / "consolidated.00.pth", map_location="cpu", weights_only=True)
    prefix = f"layers.{layer}."
    layer_state = {k[len(prefix):]: v.float() for k, v in state.items() if k.startswith(prefix)}
    ffn = layer_state["feed_forward.w1.weight"].shape[0]
    dim, heads = params["dim"], params["n_heads"]
    blk = RefLlamaBlock(dim, heads, params.get("n_kv_heads") or heads, ffn, params["norm_eps"])
    blk.load_state_dict(layer_state)
    del state
    return blk
