"""Fast-path switches of the LM block: each must leave results unchanged (fp32) or within bf16 tolerance."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from frozenlm import LMLayer
from frozenlm.bench.flops import block_flops, sandwich_flops
from frozenlm.lm.block import init_random_
from frozenlm.lm.config import BlockConfig
from frozenlm.lm.stack import BlockStack

D, N, B = 24, 9, 3
LLAMA = BlockConfig(family="llama", dim=64, n_heads=4, n_kv_heads=2, ffn_dim=160, n_layers=2)
OPT = BlockConfig(family="opt", dim=64, n_heads=4, ffn_dim=128, n_layers=2, act="relu",
                  qkv_bias=True, out_bias=True, mlp_bias=True)


def layer(cfg: BlockConfig = LLAMA, variant: str = "frozen", n_blocks: int = 2, seed: int = 0,
          dtype: torch.dtype | None = None, **kw) -> LMLayer:
    torch.manual_seed(seed)
    stack = BlockStack(cfg, n_blocks, mask=kw.pop("mask", "none"))
    init_random_(stack, std=0.05)
    if dtype is not None:
        stack.to(dtype)
    return LMLayer(D, variant=variant, blocks=stack, **kw)


def run(m: LMLayer, x: torch.Tensor, pad: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    y = m(x, pad)
    (y.float() * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    return y.detach(), x.grad


@pytest.mark.parametrize("cfg", [LLAMA, OPT], ids=["llama", "opt"])
@pytest.mark.parametrize("mask", ["none", "causal"])
def test_math_attention_equals_sdpa(cfg, mask):
    x = torch.randn(B, N, D)
    pad = torch.zeros(B, N, dtype=torch.bool)
    pad[1, 6:] = True
    y0, g0 = run(layer(cfg, mask=mask), x, pad)
    y1, g1 = run(layer(cfg, mask=mask, attn="math"), x, pad)
    torch.testing.assert_close(y1, y0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g1, g0, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["frozen", "finetune"])
def test_grad_checkpointing_identical_in_fp32(variant):
    x = torch.randn(B, N, D)
    a, b = layer(variant=variant), layer(variant=variant, grad_checkpointing=True)
    assert b.blocks.grad_checkpointing and "grad_checkpointing=True" in repr(b)
    y0, g0 = run(a, x)
    y1, g1 = run(b, x)
    assert torch.equal(y0, y1) and torch.equal(g0, g1)
    for (n, p0), (_, p1) in zip(a.named_parameters(), b.named_parameters()):
        assert (p0.grad is None) == (p1.grad is None), n
        if p0.grad is not None:
            assert torch.equal(p0.grad, p1.grad), n


def test_grad_checkpointing_saves_less_for_backward():
    def saved_bytes(m: LMLayer) -> int:
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t
        x = torch.randn(B, 32, D, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            m(x).sum()
        return total
    assert saved_bytes(layer(grad_checkpointing=True)) < 0.25 * saved_bytes(layer())


@pytest.mark.parametrize("cfg", [LLAMA, OPT], ids=["llama", "opt"])
def test_bf16_storage_computes_in_activation_dtype(cfg):
    x = torch.randn(B, N, D)
    ref = layer(cfg)
    m = layer(cfg, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in m.blocks.parameters())
    y0, g0 = run(ref, x)
    y1, g1 = run(m, x)
    assert y1.dtype == torch.float32
    # Only the weights are rounded to bf16; the math stays fp32, so errors are bf16-rounding small.
    assert ((y1 - y0).norm() / y0.norm()).item() < 3e-2
    assert ((g1 - g0).norm() / g0.norm()).item() < 3e-2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y2, g2 = run(m, x)
    assert ((y2.float() - y0).norm() / y0.norm()).item() < 5e-2
    assert ((g2.float() - g0).norm() / g0.norm()).item() < 5e-2


def test_frozen_weights_get_no_gradient_and_no_fp32_copy_is_kept():
    m = layer(dtype=torch.bfloat16)
    weights = {tuple(p.shape) for p in m.blocks.parameters() if p.dim() == 2}
    kept: list[torch.Tensor] = []
    x = torch.randn(B, N, D, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        y = m(x)
    # autograd keeps the bf16 weights themselves (for grad wrt input), never an upcast fp32 copy
    assert not [t for t in kept if tuple(t.shape) in weights and t.dtype == torch.float32]
    assert [t for t in kept if tuple(t.shape) in weights and t.dtype == torch.bfloat16]
    y.sum().backward()
    assert all(p.grad is None for p in m.blocks.parameters())


@pytest.mark.parametrize("variant", ["frozen", "finetune"])
def test_analytic_flops_match_the_flop_counter(variant):
    # math attention: torch's FlopCounterMode does not count the CPU flash-attention kernel
    m = layer(variant=variant, attn="math")
    x = torch.randn(B, N, D, requires_grad=True)
    with FlopCounterMode(display=False) as fc:
        m(x)
    assert fc.get_total_flops() == sandwich_flops(D, LLAMA, N, B, n_blocks=2)
    with FlopCounterMode(display=False) as fc:
        m(x).sum().backward()
    frozen = variant == "frozen"
    assert fc.get_total_flops() == sandwich_flops(D, LLAMA, N, B, n_blocks=2, train=True, frozen=frozen)
    assert block_flops(LLAMA, N, B).train(True) < block_flops(LLAMA, N, B).train(False)


@pytest.mark.parametrize("residual", ["none", "inner", "outer"])
def test_fused_norm_at_inference(residual):
    x = torch.randn(B, N, D)
    fused, plain = layer(residual=residual), layer(residual=residual, fuse_norm=False)
    fused.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), plain(x), atol=1e-6, rtol=1e-5)
    # with gradients enabled the unfused path runs (identical training behaviour)
    y0, _ = run(fused, x)
    y1, _ = run(plain, x)
    assert torch.equal(y0, y1)


def test_bad_attn_impl_is_rejected():
    with pytest.raises(ValueError, match="attn must be one of"):
        layer(attn="flash3")


@pytest.mark.slow
def test_compiled_block_matches_eager():
    x = torch.randn(B, N, D)
    y0, g0 = run(layer(), x)
    m = layer(compile=True)
    y1, g1 = run(m, x)
    assert not any("_orig_mod" in k for k in m.state_dict())
    torch.testing.assert_close(y1, y0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(g1, g0, atol=1e-4, rtol=1e-4)
