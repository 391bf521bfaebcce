"""Rotary tables that reproduce the source LM's own RoPE, scaling included.

`BlockConfig.rope_scaling` holds the source's scaling as readers found it (None = plain RoPE):
a dict with `rope_type` and that type's parameters, named as in transformers' `rope_parameters`.
Each supported type is computed with the same operations, in the same order and dtypes, as
transformers 5 (`modeling_rope_utils`, the rotary-embedding modules), so tables agree to the bit;
tests/test_rope_modes.py checks every type against transformers' decoder layers. `freq_factors`
is llama.cpp's form (a GGUF `rope_freqs` tensor dividing each frequency). Anything else is refused
by `check_rope`, with the source key named, instead of being silently computed another way.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .config import BlockConfig

# rope_type -> parameters that must be present
REQUIRED: dict[str, tuple[str, ...]] = {
    "linear": ("factor",),
    "dynamic": ("factor", "max_position_embeddings"),
    "yarn": ("original_max_position_embeddings",),
    "longrope": ("short_factor", "long_factor", "original_max_position_embeddings"),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "freq_factors": ("freq_factors",),
}
ADVICE = "use rope='none' (the paper's mode) or a source whose RoPE frozenlm reproduces"


def check_rope(cfg: BlockConfig) -> None:
    """Raise ValueError, naming the source key, unless `cfg`'s RoPE is reproduced exactly."""
    if cfg.unsupported.get("rope"):
        raise ValueError(f"rope='1d': {cfg.unsupported['rope']}; {ADVICE}")
    sc = cfg.rope_scaling
    if sc is None:
        return
    where = cfg.rope_key or "the source's RoPE scaling"
    kind = sc.get("rope_type")
    if kind not in REQUIRED:
        raise ValueError(f"rope='1d': {where} has rope_type={kind!r}, which frozenlm does not reproduce "
                         f"(supported: {sorted(REQUIRED)}); {ADVICE}")
    missing = [k for k in REQUIRED[kind] if sc.get(k) is None]
    if missing:
        raise ValueError(f"rope='1d': {where} (rope_type={kind!r}) lacks {missing}; {ADVICE}")
    half = cfg.head_dim // 2
    for key in ("short_factor", "long_factor", "freq_factors"):
        if key in REQUIRED[kind] and len(sc[key]) != half:
            raise ValueError(f"rope='1d': {where} {key} has {len(sc[key])} entries, but head_dim "
                             f"{cfg.head_dim} needs {half}")


def inv_freq(cfg: BlockConfig, seq_len: int) -> tuple[Tensor, float]:
    """Inverse frequencies (head_dim/2,) and the factor cos/sin are multiplied by, for `seq_len`
    tokens at positions 0..seq_len-1 (dynamic and longrope depend on the length)."""
    dim, base = cfg.head_dim, cfg.rope_theta
    sc: dict[str, Any] = cfg.rope_scaling or {"rope_type": "default"}
    kind = sc["rope_type"]
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    plain = 1.0 / (base ** exponents)
    if kind == "default":
        return plain, 1.0
    if kind == "linear":
        return plain / sc["factor"], 1.0
    if kind == "freq_factors":
        return plain / torch.tensor(sc["freq_factors"], dtype=torch.float32) / sc.get("factor", 1.0), 1.0
    if kind == "llama3":
        return _llama3(plain, sc), 1.0
    if kind == "dynamic":
        return _dynamic(dim, base, sc, seq_len), 1.0
    if kind == "yarn":
        return _yarn(dim, base, sc)
    if kind == "longrope":
        return _longrope(exponents, base, sc, seq_len)
    raise ValueError(f"rope_type {kind!r} is not supported (check_rope refuses it)")


def cos_sin(cfg: BlockConfig, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """HF-layout rotary tables (n, head_dim) for positions 0..n-1."""
    inv, scale = inv_freq(cfg, n)
    freqs = torch.arange(n, dtype=torch.float32)[:, None] * inv[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return (emb.cos() * scale).to(device), (emb.sin() * scale).to(device)


def _llama3(inv: Tensor, sc: dict[str, Any]) -> Tensor:
    factor, low, high = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
    old = sc["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = 2 * math.pi / inv
    out = torch.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, out)


def _dynamic(dim: int, base: float, sc: dict[str, Any], seq_len: int) -> Tensor:
    # transformers recomputes the base only once the length exceeds max_position_embeddings (with
    # the length as a tensor); below it the module keeps its init-time frequencies (a Python float).
    factor, max_pos = sc["factor"], sc["max_position_embeddings"]
    if seq_len > max_pos:
        s = torch.maximum(torch.tensor(seq_len), torch.tensor(max_pos))
    else:
        s = max_pos
    base = base * ((factor * s / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _yarn(dim: int, base: float, sc: dict[str, Any]) -> tuple[Tensor, float]:
    orig = sc["original_max_position_embeddings"]
    factor = sc.get("factor")
    if factor is None:
        factor = sc["max_position_embeddings"] / orig

    def get_mscale(scale: float, m: float = 1) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = sc.get("attention_factor")
    if attention is None:
        mscale, mscale_all = sc.get("mscale"), sc.get("mscale_all_dim")
        attention = (float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all)) if mscale and mscale_all
                     else get_mscale(factor))
    beta_fast, beta_slow = sc.get("beta_fast") or 32, sc.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if sc.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as transformers: avoids a division by zero
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).to(dtype=torch.float) / dim)
    extrapolation = 1 - ramp
    inv = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv, attention


def _longrope(exponents: Tensor, base: float, sc: dict[str, Any], seq_len: int) -> tuple[Tensor, float]:
    orig = sc["original_max_position_embeddings"]
    factor = sc.get("factor")
    if factor is None:
        factor = sc["max_position_embeddings"] / orig
    attention = sc.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
    ext = torch.tensor(sc["long_factor"] if seq_len > orig else sc["short_factor"], dtype=torch.float32)
    return 1.0 / (ext * base ** exponents), attention
