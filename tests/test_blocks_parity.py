"""Numerical parity of frozenlm's blocks with the `transformers` reference layers.

Each reference is a tiny random transformers model written with `save_pretrained`; layer k is
read back with `frozenlm.load_blocks(dir, [k])` (so the readers' key mapping is tested too) and
compared with the reference model's own layer k on the same input, in float32.

Masks are always passed to the reference explicitly as 4-D additive float masks under eager
attention: a standalone LlamaDecoderLayer with attention_mask=None is bidirectional under eager
but causal under sdpa, so "no mask" is never trusted.
"""
from __future__ import annotations

import pytest
import torch

import ckpt_factory as F
import frozenlm
from frozenlm.lm.stack import build_attention_mask

TOL = 1e-4
B, N = 2, 9


def additive_mask(allow: torch.Tensor | None, b: int, n: int) -> torch.Tensor:
    """bool (B|1, 1, N, N) True=may attend  ->  float (B, 1, N, N) with 0 / finfo.min."""
    if allow is None:
        allow = torch.ones(1, 1, n, n, dtype=torch.bool)
    m = torch.zeros(allow.shape, dtype=torch.float32).masked_fill(~allow, torch.finfo(torch.float32).min)
    return m.expand(b, 1, n, n).contiguous()


def reference_mask(mask: str, b: int, n: int, padding: torch.Tensor | None = None) -> torch.Tensor:
    """The mask we MEAN, built independently of frozenlm: causal tril and/or key padding."""
    allow = torch.ones(b, 1, n, n, dtype=torch.bool)
    if mask == "causal":
        allow = allow & torch.ones(n, n, dtype=torch.bool).tril()
    if padding is not None:
        allow = allow & ~padding[:, None, None, :]
        # a padded query attends to itself only (its output is ignored; keeps the row finite)
        allow = allow | torch.eye(n, dtype=torch.bool)
    return additive_mask(allow, b, n)


def run_reference(kind: str, layer: torch.nn.Module, x: torch.Tensor, mask4d: torch.Tensor,
                  cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Call a transformers 5 layer with an explicit mask (and RoPE tables for Llama/Qwen2)."""
    with torch.no_grad():
        if kind in ("llama", "qwen2"):
            if cos_sin is None:  # RoPE off: rotation by angle 0
                hd = layer.self_attn.head_dim
                cos_sin = (torch.ones(x.shape[0], x.shape[1], hd), torch.zeros(x.shape[0], x.shape[1], hd))
            out = layer(x, attention_mask=mask4d, position_embeddings=cos_sin)
        else:
            out = layer(x, attention_mask=mask4d)
    return out[0] if isinstance(out, tuple) else out


def test_reference_is_eager(hf_models):
    """The pitfall guard: every reference runs eager attention, so the explicit mask is the mask."""
    for kind, (model, _) in hf_models.items():
        assert model.config._attn_implementation == "eager", kind


@pytest.mark.parametrize("mask", ["none", "causal"])
@pytest.mark.parametrize("kind", ["llama", "qwen2", "opt", "opt-postln", "gpt2", "bert"])
def test_layer_parity(hf_models, kind, mask):
    model, path = hf_models[kind]
    ref_layers = F.reference_layers(model)
    torch.manual_seed(0)
    x = torch.randn(B, N, model.config.hidden_size)
    for k in (1, -1):
        ours = frozenlm.load_blocks(str(path), [k], mask=mask)
        assert ours.mask == mask
        with torch.no_grad():
            got = ours(x)
        want = run_reference(kind, ref_layers[k], x, reference_mask(mask, B, N))
        assert got.dtype == torch.float32
        err = (got - want).abs().max().item()
        assert err < TOL, f"{kind} layer {k} mask={mask}: max abs error {err:.3g}"
        # The output is not trivially close to the input (the block really does something).
        assert (got - x).abs().max().item() > 1e-2


def test_config_families(hf_models):
    """Each HF model type maps to the intended block layout (GQA, qkv bias, post-LN, GELU flavour)."""
    cfg = {k: frozenlm.source_config(str(p)) for k, (_, p) in hf_models.items()}
    assert cfg["llama"].family == "llama" and cfg["llama"].n_kv_heads < cfg["llama"].n_heads
    assert not cfg["llama"].qkv_bias
    assert cfg["qwen2"].qkv_bias and not cfg["qwen2"].out_bias
    assert cfg["opt"].pre_norm and not cfg["opt-postln"].pre_norm
    assert cfg["gpt2"].act == "gelu_tanh"
    assert cfg["bert"].family == "bert" and not cfg["bert"].pre_norm


def test_causal_differs_from_bidirectional(hf_models):
    """Sanity for the test itself: the two masks give different outputs except at the last token."""
    _, path = hf_models["llama"]
    x = torch.randn(B, N, F.DIM)
    with torch.no_grad():
        a = frozenlm.load_blocks(str(path), [0], mask="none")(x)
        c = frozenlm.load_blocks(str(path), [0], mask="causal")(x)
    assert (a[:, :-1] - c[:, :-1]).abs().max() > 1e-3
    assert torch.allclose(a[:, -1], c[:, -1], atol=TOL)


@pytest.mark.parametrize("mask", ["none", "causal"])
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_rope_1d_parity(hf_models, kind, mask):
    """rope='1d' equals the reference layer driven by transformers' own rotary embedding."""
    model, path = hf_models[kind]
    torch.manual_seed(1)
    x = torch.randn(B, N, F.DIM)
    pos = torch.arange(N)[None].expand(B, N)
    cos_sin = model.rotary_emb(x, pos)
    k = 2
    ours = frozenlm.load_blocks(str(path), [k], mask=mask, rope="1d")
    with torch.no_grad():
        got = ours(x)
        no_rope = frozenlm.load_blocks(str(path), [k], mask=mask)(x)
    want = run_reference(kind, F.reference_layers(model)[k], x, reference_mask(mask, B, N), cos_sin)
    err = (got - want).abs().max().item()
    assert err < TOL, f"{kind} rope=1d mask={mask}: max abs error {err:.3g}"
    assert (got - no_rope).abs().max().item() > 1e-3  # RoPE really changes the result


def test_rope_only_for_llama(hf_models):
    with pytest.raises(ValueError, match="rope"):
        frozenlm.load_blocks(str(hf_models["bert"][1]), [0], rope="1d")
    with pytest.raises(ValueError, match="mask"):
        frozenlm.load_blocks(str(hf_models["llama"][1]), [0], mask="sliding")


@pytest.mark.parametrize("kind", ["llama", "opt", "gpt2", "bert"])
def test_stack_of_layers_parity(hf_models, kind):
    """A stack of all layers equals the reference layers applied one after the other."""
    model, path = hf_models[kind]
    x = torch.randn(B, N, model.config.hidden_size)
    stack = frozenlm.load_blocks(str(path), "0:", mask="causal")
    assert stack.layer_indices == [0, 1, 2]
    want = x
    for layer in F.reference_layers(model):
        want = run_reference(kind, layer, want, reference_mask("causal", B, N))
    with torch.no_grad():
        got = stack(x)
    assert (got - want).abs().max().item() < TOL


def _padded_batch(dim: int, lengths: list[int], n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), n, dim, generator=g)
    pad = torch.arange(n)[None, :] >= torch.tensor(lengths)[:, None]  # True = padded
    return x, pad


@pytest.mark.parametrize("mask", ["none", "causal"])
@pytest.mark.parametrize("kind", ["llama", "opt", "gpt2", "bert"])
def test_padding_mask(hf_models, kind, mask):
    """Padded tokens never influence valid ones; valid outputs equal the reference; no NaN."""
    model, path = hf_models[kind]
    dim = model.config.hidden_size
    lengths = [N, 5, 1]
    x, pad = _padded_batch(dim, lengths, N)
    stack = frozenlm.load_blocks(str(path), "-2:", mask=mask)
    with torch.no_grad():
        y1 = stack(x, padding_mask=pad)
        x2 = x.clone()
        x2[pad] = torch.randn(int(pad.sum()), dim) * 100.0  # wildly different pad contents
        y2 = stack(x2, padding_mask=pad)
    assert torch.isfinite(y1).all() and torch.isfinite(y2).all()
    valid = ~pad
    assert torch.equal(y1[valid], y2[valid]) or (y1[valid] - y2[valid]).abs().max() < 1e-6
    # Without the mask the pads DO leak into valid tokens (so the check above has teeth) ...
    if mask == "none":
        with torch.no_grad():
            u1, u2 = stack(x), stack(x2)
        assert (u1[1, :5] - u2[1, :5]).abs().max() > 1e-3
    # ... and each valid sequence equals the unpadded sequence run alone.
    for b, length in enumerate(lengths):
        with torch.no_grad():
            alone = stack(x[b:b + 1, :length])
        assert (alone[0] - y1[b, :length]).abs().max() < TOL
    # And the reference, given the same key-padding mask, agrees on valid tokens.
    want = x
    for k in stack.layer_indices:
        want = run_reference(kind, F.reference_layers(model)[k], want, reference_mask(mask, x.shape[0], N, pad))
    assert (want[valid] - y1[valid]).abs().max() < TOL


def test_padding_mask_shape_checked(hf_models):
    stack = frozenlm.load_blocks(str(hf_models["llama"][1]), [0])
    with pytest.raises(ValueError, match="padding_mask"):
        stack(torch.randn(2, 4, F.DIM), padding_mask=torch.zeros(2, 5, dtype=torch.bool))


def test_build_attention_mask_semantics():
    pad = torch.tensor([[False, False, True]])
    assert build_attention_mask(3, False, None, torch.device("cpu")) is None
    m = build_attention_mask(3, True, pad, torch.device("cpu"))[0, 0]
    # valid queries never see the pad key; the padded query keeps a non-empty row (itself included)
    expected = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    assert torch.equal(m, expected)


@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_plain_causal_passes_no_mask_tensor_and_equals_an_explicit_mask(hf_models, impl):
    # No pads and no window shorter than the sequence: no N x N tensor is built, SDPA gets is_causal
    # (so fused causal kernels can run), and the result equals the explicit lower-triangular mask.
    dev = torch.device("cpu")
    assert build_attention_mask(5, True, None, dev) is None
    assert build_attention_mask(5, True, None, dev, window=5) is None
    assert build_attention_mask(5, True, None, dev, window=4) is not None
    stack = frozenlm.load_blocks(str(hf_models["llama"][1]), [1], mask="causal")
    stack.set_attn_impl(impl)
    x = torch.randn(B, N, F.DIM)
    tril = torch.ones(1, 1, N, N, dtype=torch.bool).tril()
    with torch.no_grad():
        got = stack(x)
        want = stack.layers[0](x, tril, False, None)
        bidir = stack.layers[0](x, None, False, None)
    assert torch.allclose(got, want, atol=1e-6) and not torch.allclose(got, bidir, atol=1e-3)
    probs = stack.layers[0].attn.attention_probs(stack.layers[0].attn_norm(x), None, None, is_causal=True)
    assert torch.all(probs.triu(1) == 0)  # the analysis path honours is_causal too


def test_bf16_block_close_to_fp32(hf_models):
    _, path = hf_models["llama"]
    x = torch.randn(B, N, F.DIM)
    with torch.no_grad():
        a = frozenlm.load_blocks(str(path), [1])(x)
        b = frozenlm.load_blocks(str(path), [1], dtype=torch.bfloat16)(x.bfloat16())
    assert b.dtype == torch.bfloat16
    rel = (a - b.float()).norm() / a.norm()
    assert rel < 2e-2


@pytest.mark.parametrize("mask", ["none", "causal"])
def test_llama_mlp_bias_parity(tmp_path, mask):
    """LLaMA-family checkpoints with mlp_bias=True carry gate/up/down biases; all three are loaded."""
    model = F.make_model("llama", seed=21, mlp_bias=True)
    path = F.save_hf(model, tmp_path / "mlp_bias")
    assert frozenlm.source_config(str(path)).mlp_bias
    x = torch.randn(B, N, F.DIM)
    for k in (0, -1):
        ours = frozenlm.load_blocks(str(path), [k], mask=mask)
        sd = ours.layers[0].state_dict()
        ref = F.reference_layers(model)[k].mlp
        for ours_name, ref_lin in (("ffn.gate.bias", ref.gate_proj), ("ffn.up.bias", ref.up_proj),
                                   ("ffn.down.bias", ref.down_proj)):
            assert torch.equal(sd[ours_name], ref_lin.bias), ours_name
        with torch.no_grad():
            got = ours(x)
        want = run_reference("llama", F.reference_layers(model)[k], x, reference_mask(mask, B, N))
        assert (got - want).abs().max().item() < TOL
