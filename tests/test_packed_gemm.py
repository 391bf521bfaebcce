"""Frozen q/k/v and gate/up projections run as one GEMM each (issue 21): exact, and invisible in the
state dict, the digests and the checkpoints."""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from frozenlm.lm import load_blocks
from frozenlm.lm.block import Block, _consecutive
from frozenlm.lm.config import BlockConfig
from frozenlm.lm.load import tensor_digest


def _cfg(**kw) -> BlockConfig:
    base = dict(family="llama", dim=64, n_heads=4, n_kv_heads=2, ffn_dim=96, n_layers=1, qkv_bias=True)
    base.update(kw)
    return BlockConfig(**base)


def _unpacked(block: Block) -> Block:
    """The same weights, each in its own tensor (what a block holds before packing)."""
    ref = copy.deepcopy(block)
    for m in ref.modules():
        for name, p in list(m.named_parameters(recurse=False)):
            p.data = p.data.clone()
    return ref


def _separate_forward(block: Block, x: torch.Tensor) -> torch.Tensor:
    """Forward with the packed path switched off (one GEMM per projection)."""
    ref = _unpacked(block)
    assert ref.attn.fused(x) is None
    return ref(x)


def _frozen_block(cfg: BlockConfig, seed: int = 0) -> Block:
    torch.manual_seed(seed)
    blk = Block(cfg)
    for p in blk.parameters():
        nn.init.normal_(p, std=0.2)
    blk.requires_grad_(False)
    return blk.to(torch.float32)  # any move packs


def test_move_packs_projections_and_keeps_keys_values_digest() -> None:
    cfg = _cfg()
    torch.manual_seed(0)
    blk = Block(cfg)
    for p in blk.parameters():
        nn.init.normal_(p, std=0.2)
    before = {k: v.clone() for k, v in blk.state_dict().items()}
    digest = tensor_digest(blk)
    a, f = blk.attn, blk.ffn
    assert not _consecutive([a.q.weight, a.k.weight, a.v.weight])  # separately initialised
    blk.to(torch.float32)
    assert _consecutive([a.q.weight, a.k.weight, a.v.weight]) and _consecutive([a.q.bias, a.k.bias, a.v.bias])
    assert _consecutive([f.gate.weight, f.up.weight])
    after = blk.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert tensor_digest(blk) == digest


@pytest.mark.parametrize("kw", [{}, {"qkv_bias": False, "n_kv_heads": 4}, {"qk_norm": True, "qkv_bias": False}])
def test_packed_forward_matches_separate_gemms(kw: dict) -> None:
    blk = _frozen_block(_cfg(**kw))
    x = torch.randn(3, 7, 64)
    assert blk.attn.fused(x) is not None and blk.ffn.fused(x) is not None
    torch.testing.assert_close(blk(x), _separate_forward(blk, x), rtol=1e-5, atol=1e-5)


def test_packed_backward_gives_the_same_input_gradient() -> None:
    blk = _frozen_block(_cfg())
    x = torch.randn(2, 5, 64, requires_grad=True)
    (blk(x) ** 2).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    ref = _unpacked(blk)
    (ref(x2) ** 2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)


def test_trainable_weights_use_one_gemm_each_and_get_their_own_gradients() -> None:
    blk = _frozen_block(_cfg())
    blk.requires_grad_(True)  # e.g. variant: finetune
    x = torch.randn(2, 5, 64)
    assert blk.attn.fused(x) is None and blk.ffn.fused(x) is None
    blk(x).sum().backward()
    assert all(p.grad is not None for p in (blk.attn.q.weight, blk.attn.k.weight, blk.ffn.gate.weight))


def test_bf16_storage_and_a_replaced_weight_stay_exact() -> None:
    blk = _frozen_block(_cfg())
    blk.to(torch.bfloat16)
    a = blk.attn
    assert a.q.weight.dtype == torch.bfloat16 and _consecutive([a.q.weight, a.k.weight, a.v.weight])
    x = torch.randn(2, 5, 64)
    torch.testing.assert_close(blk(x), _separate_forward(blk, x), rtol=1e-5, atol=1e-5)
    # A weight swapped for a new tensor (not through a move) leaves the pack: the fallback is used.
    a.k.weight = nn.Parameter(a.k.weight.detach().clone() * 2, requires_grad=False)
    assert a.fused(x) is None
    torch.testing.assert_close(blk(x), _separate_forward(blk, x), rtol=1e-5, atol=1e-5)


def test_loaded_source_is_packed_and_its_state_saves_with_safetensors(tmp_path) -> None:
    stack = load_blocks("smollm2-135m", [-1])
    blk = stack.layers[0]
    x = torch.randn(2, 5, blk.attn.q.weight.shape[1])
    assert blk.attn.fused(x) is not None and blk.ffn.fused(x) is not None
    torch.testing.assert_close(blk(x), _separate_forward(blk, x), rtol=1e-5, atol=1e-5)
    sd = stack.state_dict()
    save_file(sd, str(tmp_path / "s.safetensors"))  # views of one buffer are non-overlapping: allowed
    back = load_file(str(tmp_path / "s.safetensors"))
    assert all(torch.equal(back[k], sd[k]) for k in sd)


# -- frozen_dtype: auto (bf16 storage exactly where the run computes in bf16) -----------------------

@pytest.mark.parametrize("source", ["smollm2-135m", "minilm-l6"])
def test_bf16_storage_under_bf16_compute_changes_no_bit(source: str) -> None:
    """Why `auto` may pick bf16 storage: under bf16 autocast the outputs and input gradients are
    bit-identical to float32 storage (the matmuls see the same bf16 values either way)."""
    from frozenlm.layer import LMLayer
    torch.manual_seed(0)
    a = LMLayer(128, source=source, layers=[-1])
    torch.manual_seed(0)
    b = LMLayer(128, source=source, layers=[-1], frozen_dtype="bfloat16")
    assert next(b.blocks.parameters()).dtype == torch.bfloat16
    x = torch.randn(4, 5, 128, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya, yb = a(x), b(x)
    ga, = torch.autograd.grad(ya.float().sum(), x)
    gb, = torch.autograd.grad(yb.float().sum(), x)
    assert torch.equal(ya, yb) and torch.equal(ga, gb)


@pytest.mark.parametrize("precision,stored", [("bf16", "bfloat16"), ("fp32", None)])
def test_engine_resolves_auto_and_saves_the_stored_dtype(tmp_path, precision: str, stored) -> None:
    import json

    from frozenlm.config import load_config
    from frozenlm.engine.task import task_schema
    from frozenlm.engine.train import train
    over = ["data.subset_train=64", "data.subset_val=32", "batch_size=32", "epochs=1", "progress=false",
            "eval_every=0", f"precision={precision}", f"run_dir={tmp_path}"]
    cfg = load_config("configs/image/fmnist_smollm2.yaml", over, schema_for=task_schema)
    assert cfg.model.lm.frozen_dtype == "auto"
    train(cfg)
    meta = json.loads(next((tmp_path / "checkpoints").glob("step_*/meta.json")).read_text())
    assert meta["config"]["model"]["lm"]["frozen_dtype"] == stored
    (src,) = meta["frozen_sources"].values()
    assert src["dtype"] == (stored or "float32")


def test_auto_outside_the_engine_stores_float32_and_bad_names_are_refused() -> None:
    from frozenlm.layer import LMLayer
    assert next(LMLayer(64, source="minilm-l6", frozen_dtype="auto").blocks.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="frozen_dtype='bf16' is not a storage dtype: use one of auto, float32"):
        LMLayer(64, source="minilm-l6", frozen_dtype="bf16")
