"""A stack of consecutive language-model blocks with the sandwich's attention options."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from torch.utils.checkpoint import checkpoint

from .block import ATTN_IMPLS, Block
from .config import BlockConfig
from .rope import check_rope, cos_sin

MASKS = ("none", "causal")
ROPES = ("none", "1d")


def build_attention_mask(n: int, causal: bool, padding_mask: Tensor | None,
                         device: torch.device, window: int | None = None) -> Tensor | None:
    """Boolean (B|1, 1, N, N) mask, True = may attend, or None when no mask tensor is needed.

    `padding_mask` is (B, N) bool with True marking PADDED tokens (the nn.MultiheadAttention
    key_padding_mask convention). Every token may always attend to itself so that no row is
    fully masked (a padded query would otherwise produce NaN); valid tokens never see pads.
    `window` (causal only): query q sees keys k with q - window < k <= q, as transformers'
    sliding-window causal mask does.
    Plain causal attention (no pads, no window shorter than the sequence) also gives None: the
    caller passes is_causal instead, so SDPA can pick its fused causal kernels (flash on CUDA).
    """
    if padding_mask is None and (not causal or window is None or window >= n):
        return None
    allow = torch.ones(1, 1, n, n, dtype=torch.bool, device=device)
    if causal:
        allow = allow.tril()
        if window is not None:
            allow = allow.triu(1 - window)
    if padding_mask is not None:
        allow = allow & ~padding_mask[:, None, None, :].to(device)
    return allow | torch.eye(n, dtype=torch.bool, device=device)


class BlockStack(nn.Module):
    """Consecutive blocks of one language model: bidirectional and without RoPE by default.

    rope="1d" and mask="causal" reproduce the source LM exactly, per layer: its RoPE scaling, its
    NoPE layers, its sliding windows (lm/rope.py); what cannot be reproduced is refused with the
    source key named. mask="none" (the paper's mode) never applies a window.
    `layer_indices` records which layers of the source these are (for checkpoints/inspection).
    `attn`: "sdpa" (fused attention) or "math" (eager reference). `grad_checkpointing`: recompute
    each block in backward instead of keeping its activations (4096- and 11008-wide for LLaMA-7B).
    """

    def __init__(self, cfg: BlockConfig, n_blocks: int = 1, mask: str = "none", rope: str = "none",
                 layer_indices: list[int] | None = None, attn: str = "sdpa",
                 grad_checkpointing: bool = False) -> None:
        super().__init__()
        if mask not in MASKS:
            raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
        if rope not in ROPES:
            raise ValueError(f"rope must be one of {ROPES}, got {rope!r}")
        if rope != "none" and cfg.family != "llama":
            raise ValueError(f"rope={rope!r} is only defined for the LLaMA family, not {cfg.family!r}")
        if mask == "causal" and cfg.unsupported.get("causal"):
            raise ValueError(f"mask='causal': {cfg.unsupported['causal']}; use mask='none' (the paper's mode)")
        self.cfg, self.mask, self.rope = cfg, mask, rope
        self.layer_indices = list(layer_indices) if layer_indices is not None else list(range(n_blocks))
        # Gemma 3's sliding layers rotate with their own theta: one shared config (and table) per RoPE
        local = next((cfg.layer_rope_config(i) for i in self.layer_indices if cfg.layer_rope_config(i) is not cfg),
                     None)
        rope_cfgs = {i: cfg if cfg.layer_rope_config(i) is cfg else local for i in self.layer_indices}
        if rope == "1d":
            for rc in {id(c): c for c in rope_cfgs.values()}.values():
                check_rope(rc)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(n_blocks))
        for blk, i in zip(self.layers, self.layer_indices):
            blk.window = cfg.layer_window(i) if mask == "causal" else None
            blk.use_rope = rope == "1d" and cfg.layer_has_rope(i)
            blk.rope_cfg = rope_cfgs[i]
        self.grad_checkpointing = grad_checkpointing
        self.set_attn_impl(attn)

    def set_attn_impl(self, impl: str) -> None:
        """Switch every block's attention between "sdpa" and "math"."""
        if impl not in ATTN_IMPLS:
            raise ValueError(f"attn must be one of {ATTN_IMPLS}, got {impl!r}")
        self.attn_impl = impl
        for blk in self.layers:
            blk.attn.impl = impl

    @property
    def dim(self) -> int:
        """Width of the blocks (d_lm)."""
        return self.cfg.dim

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """x: (B, N, dim); padding_mask: optional (B, N) bool, True = padded token."""
        if padding_mask is not None and padding_mask.shape != x.shape[:2]:
            raise ValueError(f"padding_mask shape {tuple(padding_mask.shape)} does not match tokens "
                             f"{tuple(x.shape[:2])} (expected (batch, tokens), True = padded)")
        n = x.shape[1]
        causal = self.mask == "causal"
        masks: dict[int | None, Tensor | None] = {}
        for w in {blk.window for blk in self.layers}:
            masks[w] = build_attention_mask(n, causal, padding_mask, x.device, window=w)
        tables: dict[int, tuple[Tensor, Tensor]] = {}
        for blk in self.layers:
            if blk.use_rope and id(blk.rope_cfg) not in tables:
                tables[id(blk.rope_cfg)] = cos_sin(blk.rope_cfg, n, x.device)
        recompute = self.grad_checkpointing and torch.is_grad_enabled()
        for blk in self.layers:
            args = (masks[blk.window], causal, tables.get(id(blk.rope_cfg)) if blk.use_rope else None)
            if recompute:
                # Non-reentrant checkpointing also works when no block parameter needs a gradient.
                x = checkpoint(blk, x, *args, use_reentrant=False)
            else:
                x = blk(x, *args)
        return x

    def extra_repr(self) -> str:
        windows = [blk.window for blk in self.layers]
        nope = [i for blk, i in zip(self.layers, self.layer_indices) if self.rope == "1d" and not blk.use_rope]
        scaling = (self.cfg.rope_scaling or {}).get("rope_type") if self.rope == "1d" else None
        return (f"family={self.cfg.family}, dim={self.cfg.dim}, layers={self.layer_indices}, "
                f"mask={self.mask}, rope={self.rope}, attn={self.attn_impl}"
                + (f", rope_scaling={scaling}" if scaling else "")
                + (f", windows={windows}" if any(w is not None for w in windows) else "")
                + (f", no_rope_layers={nope}" if nope else "")
                + (", grad_checkpointing=True" if self.grad_checkpointing else ""))
