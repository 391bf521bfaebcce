"""CUDA checks (`pytest -m cuda`, run by benchmarks/gpu_check.sh); they skip where no GPU is present."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from frozenlm.layer import LMLayer
from frozenlm.lm.block import init_random_
from frozenlm.lm.config import BlockConfig
from frozenlm.lm.stack import BlockStack

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SMOL = dict(family="llama", dim=576, n_heads=9, n_kv_heads=3, ffn_dim=1536, n_layers=30)  # SmolLM2-135M's shape
LLAMA7B = dict(family="llama", dim=4096, n_heads=32, n_kv_heads=32, ffn_dim=11008, n_layers=32)


def _layer(mask: str = "none", dtype: torch.dtype | None = None, **cfg) -> LMLayer:
    torch.manual_seed(0)
    stack = BlockStack(BlockConfig(**{**SMOL, **cfg}), 1, mask=mask, layer_indices=[29])
    init_random_(stack)
    stack.requires_grad_(False)
    if dtype is not None:
        stack.to(dtype)
    return LMLayer(384, variant="frozen", blocks=stack)


@pytest.mark.parametrize("mask", ["none", "causal"])
def test_sdpa_runs_a_fused_kernel_in_the_papers_modes(mask: str) -> None:
    """No materialised mask for bidirectional or plainly causal attention: flash / memory-efficient
    attention must be usable (with only those backends allowed, a mask tensor would fail)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    lm = _layer(mask, n_kv_heads=9, n_layers=30).cuda()  # flash needs equal q/kv heads on older torch; keep it plain
    x = torch.randn(4, 197, 384, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel([SDPBackend.FLASH_ATTENTION,
                                                                    SDPBackend.EFFICIENT_ATTENTION]):
        y = lm(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_bf16_autocast_matches_fp32_on_cuda() -> None:
    lm = _layer().cuda()
    x = torch.randn(4, 50, 384, device="cuda", requires_grad=True)
    ref = lm(x)
    g_ref, = torch.autograd.grad(ref.square().sum(), x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = lm(x)
    g, = torch.autograd.grad(y.float().square().sum(), x)
    torch.testing.assert_close(y.float(), ref, rtol=0.05, atol=0.05)
    assert torch.nn.functional.cosine_similarity(g.flatten(), g_ref.flatten(), dim=0) > 0.99


def test_a_step_allocates_no_gradient_memory_for_frozen_weights() -> None:
    """Peak memory of a training step over the frozen block stays far below another copy of its
    weights: no gradients, no optimizer state and no fp32 copies are kept for them."""
    lm = _layer(dtype=torch.bfloat16, **LLAMA7B).cuda()  # 404 MiB of frozen bf16 weights
    frozen = sum(p.numel() * p.element_size() for p in lm.blocks.parameters())
    opt = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad])
    x = torch.randn(2, 50, 384, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    for _ in range(2):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = lm(x).float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    step = torch.cuda.max_memory_allocated() - base
    acts = 2 * 50 * (2 * 4096 + 2 * 11008 + 384) * 4 * 4  # generous bound on kept activations (~49 MiB)
    print(f"step memory {step / 2**20:.1f} MiB, frozen weights {frozen / 2**20:.1f} MiB")
    assert step < 0.5 * frozen + acts
    assert all(p.grad is None for p in lm.blocks.parameters())
