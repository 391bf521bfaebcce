"""Forward hooks that capture the per-stage tokens of a ViTLM and the CLS->patch attention.

Stages (method.md section 5), each (B, N, C) with every token (CLS included):
  F_E        encoder output = the LMLayer's input
  F_L1       proj_in output
  attn_half  h = x + Attn(norm(x)) of the LAST LM block (its `attn_half` identity)
  block      output of the LM block stack (before the unit RMSNorm)
  F_L2       the LMLayer's output (proj_out, plus z when residual="outer")
A baseline (variant "none") yields only F_E; the "mlp" control yields F_E, F_L1, F_L2.
Attention: CLS -> all tokens of the last LM block for LM models, of the last ViT block otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

STAGES: tuple[str, ...] = ("F_E", "F_L1", "attn_half", "block", "F_L2")


@dataclass
class Capture:
    """What one forward pass exposed.

    stages: {stage: (B, N, C) float tensor}, only the stages the model has, in STAGES order.
    cls_attention: (B, H, N) softmax row of the CLS query (sums to 1 over all N keys), or None.
    attention_source: "lm" or "vit" (which block's attention `cls_attention` is).
    num_prefix_tokens: CLS/register tokens before the patch tokens; grid: patch grid (h, w).
    output: the model's logits, identical to an unhooked forward.
    """

    stages: dict[str, Tensor]
    cls_attention: Tensor | None
    attention_source: str | None
    num_prefix_tokens: int
    grid: tuple[int, int]
    output: Tensor
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def attention_heads(self) -> Tensor | None:
        """CLS -> patch attention per head, (B, H, n_patches)."""
        if self.cls_attention is None:
            return None
        return self.cls_attention[..., self.num_prefix_tokens:]

    @property
    def attention(self) -> Tensor | None:
        """CLS -> patch attention summed over heads (method.md), (B, n_patches)."""
        heads = self.attention_heads
        return None if heads is None else heads.sum(1)


def _timm_attention_probs(attn: nn.Module, x: Tensor) -> Tensor:
    """Softmax weights (B, H, N, N) of a timm ViT `Attention` given its (already normed) input."""
    b, n, c = x.shape
    h = attn.num_heads
    qkv = attn.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    q, k = attn.q_norm(q), attn.k_norm(k)
    s = (q.float() * attn.scale) @ k.float().transpose(-1, -2)
    return s.softmax(-1)


@torch.no_grad()
def capture_sandwich_stages(lm: nn.Module, run: Callable[[], Any], input_name: str = "F_E"
                            ) -> tuple[dict[str, Tensor], Any]:
    """Tokens at every stage of an LMLayer during `run()`: {input_name (the layer's input), F_L1,
    attn_half, block, F_L2} (those that exist for its variant), in that order, and run()'s output.

    For backbones whose analysis is not the ViT one (video, fused vision-language tokens).
    """
    stages: dict[str, Tensor] = {}

    def keep(name: str) -> Any:
        return lambda _m, _i, out: stages.__setitem__(name, out.detach().float())
    handles = [lm.register_forward_pre_hook(lambda _m, args: stages.__setitem__(input_name, args[0].detach().float()))]
    if lm.variant != "none":
        handles.append(lm.proj_in.register_forward_hook(keep("F_L1")))
        if lm.blocks is not None:
            handles.append(lm.blocks.layers[-1].attn_half.register_forward_hook(keep("attn_half")))
            handles.append(lm.blocks.register_forward_hook(keep("block")))
        handles.append(lm.register_forward_hook(keep("F_L2")))
    try:
        out = run()
    finally:
        for h in handles:
            h.remove()
    order = [input_name, "F_L1", "attn_half", "block", "F_L2"]
    return {k: stages[k] for k in order if k in stages}, out


@torch.no_grad()
def capture_features(model: nn.Module, x: Tensor) -> Capture:
    """Run `model` (a ViTLM) on images `x` once, returning every existing stage and the attention.

    The hooks only read tensors, so the returned logits equal those of `model(x)`.
    """
    lm = model.lm_layer
    vit = model.vit
    attn_rows: dict[str, Tensor] = {}
    handles = []
    source: str | None = None
    if lm.blocks is not None:
        last = lm.blocks.layers[-1]

        def lm_attn(blk: nn.Module, args: tuple) -> None:
            # Block.forward(x, mask, is_causal, rope): recompute the weights on the same input.
            xin = args[0]
            mask = args[1] if len(args) > 1 else None
            causal = bool(args[2]) if len(args) > 2 else False
            rope = args[3] if len(args) > 3 else None
            q_in = blk.attn_norm(xin) if blk.pre_norm else xin
            attn_rows["cls"] = blk.attn.attention_probs(q_in, mask, rope, causal)[:, :, 0].detach()

        handles.append(last.register_forward_pre_hook(lm_attn))
        source = "lm"
    elif len(vit.blocks) > 0:
        def vit_attn(attn: nn.Module, args: tuple) -> None:
            attn_rows["cls"] = _timm_attention_probs(attn, args[0])[:, :, 0].detach()

        handles.append(vit.blocks[-1].attn.register_forward_pre_hook(vit_attn))
        source = "vit"
    try:
        stages, out = capture_sandwich_stages(lm, lambda: model(x))
    finally:
        for hd in handles:
            hd.remove()
    ordered = {k: stages[k] for k in STAGES if k in stages}
    grid = tuple(int(g) for g in vit.patch_embed.grid_size)
    return Capture(stages=ordered, cls_attention=attn_rows.get("cls"), attention_source=source,
                   num_prefix_tokens=int(getattr(vit, "num_prefix_tokens", 1)), grid=grid, output=out)
