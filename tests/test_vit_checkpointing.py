"""`model.grad_checkpointing` of the image models: recompute the ViT blocks in backward.

The LM block sits at the top of the ViT, so checkpointing it alone frees nothing at the peak of a step;
this switch is the one that does (docs/performance.md). It must be read from the config (not ignored), give
the same gradients as no checkpointing, and really recompute.
"""
from __future__ import annotations

import torch

from frozenlm.bench.run import step_configs
from frozenlm.config import load_config
from frozenlm.engine.task import get_task
from frozenlm.models import create_model


def _grads(model: torch.nn.Module, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], int]:
    """Parameter gradients of one backward, and how many tensors autograd saved for it."""
    model.train()
    model.zero_grad(set_to_none=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(1) or t, lambda t: t):
        out = model(x)
    out.square().sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, len(saved)


def test_config_key_reaches_the_model_and_recomputes_with_equal_gradients() -> None:
    task = get_task("image")
    built = {}
    for on in (False, True):
        cfg = load_config("configs/image/fmnist_smollm2.yaml", [f"model.grad_checkpointing={str(on).lower()}"])
        torch.manual_seed(0)
        built[on] = task.build_model(cfg)
    plain, ckpt = built[False], built[True]
    assert ckpt.vit.grad_checkpointing and not plain.vit.grad_checkpointing
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(3, 1, 28, 28)
    (g0, n0), (g1, n1) = _grads(plain, x), _grads(ckpt, x)
    assert n1 < n0 / 2  # the ViT blocks keep only their inputs; backward recomputes the rest
    assert g0.keys() == g1.keys() and len(g0) > 4
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=0, atol=0, msg=n)


def test_timm_models_take_the_switch_too() -> None:
    m = create_model("timm:resnet18", lm=None, num_classes=4, grad_checkpointing=True)
    assert m.grad_checkpointing


def test_bench_has_the_memory_saving_rows_for_a_vit_only() -> None:
    vit = dict(step_configs("bf16", "cpu", False))
    lean = vit["frozenlm (sdpa + bf16 weights + ViT ckpt)"]
    assert lean["vit_checkpointing"] and not lean.get("grad_checkpointing")
    assert vit["frozenlm (sdpa + bf16 weights + ViT and LM ckpt)"]["grad_checkpointing"]
    block = dict(step_configs("bf16", "cpu", False, model="block"))
    assert not any("ViT ckpt" in n for n in block)
