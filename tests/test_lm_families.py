"""Gemma 2/3, Qwen3, Phi-3 and the LMs of multimodal checkpoints equal transformers' own layers.

Each reference is a tiny random transformers model (eager attention; head_dim 24 with dim 64, windows
of 4 tokens, Gemma 2 soft-capping, Gemma's query_pre_attn_scalar 20). In the paper's mode the
reference layer gets an all-zero mask and no rotation; with rope='1d', mask='causal' the whole model
runs and builds its own masks (sliding or global per layer) and RoPE (Gemma 3: per layer type), and
hooks record each layer's input and output (test_rope_modes.layer_io). Hidden states < 1e-5 in fp32.
"""
from __future__ import annotations

import json

import pytest
import torch

import ckpt_factory as F
import frozenlm
from frozenlm.lm import CheckpointError, describe_source
from test_rope_modes import layer_io, reference_from_files, write_config

TOL = 1e-5
STD = 0.1
B, N = 2, 12  # N > the 4-token window
FAMILIES = ("gemma2", "gemma3", "qwen3", "phi3")


@pytest.fixture(scope="module")
def family_ckpts(tmp_path_factory):
    """{kind: (model, HF dir)}; Gemma 3 is saved sharded (several safetensors files + index)."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    for i, kind in enumerate(FAMILIES):
        model = F.make_model(kind, seed=30 + i, std=STD)
        out[kind] = (model, F.save_hf(model, root / kind, **({"max_shard_size": "60KB"} if kind == "gemma3" else {})))
    return out


def paper_mode_reference(layer: torch.nn.Module, x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """The layer attending to every token, without rotation (the sliding window is the model's to apply)."""
    b, n, _ = x.shape
    no_rotation = (torch.ones(b, n, head_dim), torch.zeros(b, n, head_dim))
    with torch.no_grad():
        out = layer(x, attention_mask=torch.zeros(b, 1, n, n), position_embeddings=no_rotation)
    return out[0] if isinstance(out, tuple) else out


def assert_causal_rope_parity(path, model, layers, n: int = N) -> None:
    x = torch.randn(B, n, F.DIM, generator=torch.Generator().manual_seed(0))
    ins, outs = layer_io(model, x)
    for k in layers:
        with torch.no_grad():
            got = frozenlm.load_blocks(str(path), [k], mask="causal", rope="1d")(ins[k])
        err = (got - outs[k]).abs().max().item()
        assert err < TOL, f"{path.name} layer {k}: max abs error {err:.3g}"


@pytest.mark.parametrize("kind", FAMILIES)
def test_paper_mode_parity(family_ckpts, kind):
    model, path = family_ckpts[kind]
    x = torch.randn(B, N, F.DIM, generator=torch.Generator().manual_seed(1))
    hd = getattr(model.config, "head_dim", None) or F.DIM // F.HEADS  # Phi-3 derives it
    for k in range(model.config.num_hidden_layers):
        stack = frozenlm.load_blocks(str(path), [k])
        with torch.no_grad():
            got = stack(x)
        want = paper_mode_reference(F.reference_layers(model)[k], x, hd)
        assert (got - want).abs().max().item() < TOL, f"{kind} layer {k}"
        assert (got - x).abs().max().item() > 1e-2
    # a stack of every layer equals the layers in sequence (the states grow to ~10: relative tolerance)
    want = x
    for layer in F.reference_layers(model):
        want = paper_mode_reference(layer, want, hd)
    with torch.no_grad():
        assert (frozenlm.load_blocks(str(path), "0:")(x) - want).abs().max().item() < TOL * want.abs().max().item()


@pytest.mark.parametrize("kind", FAMILIES)
def test_causal_rope_parity(family_ckpts, kind):
    """Sliding and global layers alike (N is longer than the window)."""
    model, path = family_ckpts[kind]
    assert_causal_rope_parity(path, model, range(model.config.num_hidden_layers))


def test_gemma3_global_layer_rope_scaling(tmp_path):
    """Gemma 3's linear scaling applies to the global layers only; the local ones keep theta 1e4."""
    rope = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}
    model = F.make_model("gemma3", seed=40, std=STD, rope_parameters=rope)
    path = F.save_hf(model, tmp_path / "g3")
    cfg = frozenlm.source_config(str(path))
    assert cfg.rope_scaling["rope_type"] == "linear" and cfg.local_rope == {"rope_theta": 1e4, "rope_scaling": None}
    assert_causal_rope_parity(path, model, (4, 5))


def test_gemma3_legacy_config(tmp_path, family_ckpts):
    """Older config.json files: rope_theta + rope_local_base_freq + rope_scaling (global layers) and
    sliding_window_pattern instead of layer_types, read as transformers reads them."""
    import shutil
    path = tmp_path / "g3"
    shutil.copytree(family_ckpts["gemma3"][1], path)
    write_config(path, rope_parameters=None, layer_types=None, sliding_window_pattern=3, rope_theta=5e5,
                 rope_local_base_freq=2e4, rope_scaling={"rope_type": "linear", "factor": 2.0})
    ref = reference_from_files(path)
    assert ref.config.layer_types[2] == "full_attention" and ref.config.layer_types[3] == "sliding_attention"
    assert frozenlm.source_config(str(path)).layer_windows == [4, 4, None, 4, 4, None]
    assert_causal_rope_parity(path, ref, (1, 2))


def test_family_flags(family_ckpts):
    cfg = {k: frozenlm.source_config(str(p)) for k, (_, p) in family_ckpts.items()}
    g2, g3, q3, p3 = (cfg[k] for k in FAMILIES)
    assert g2.attn_softcap == 3.0 and g3.attn_softcap is None
    assert g2.post_norms and g3.post_norms and not q3.post_norms
    assert g3.qk_norm and q3.qk_norm and not g2.qk_norm and not p3.qk_norm
    assert g2.query_scale == g3.query_scale == 20 and q3.query_scale is None
    assert g2.act == g3.act == "gelu_tanh" and q3.act == p3.act == "silu"
    assert g2.head_dim == q3.head_dim == F.NEW_HEAD_DIM and not q3.qkv_bias
    # local / global layers are recorded per layer
    assert g2.layer_windows == [4, None, 4, None]
    assert g3.layer_windows == [4] * 5 + [None]
    assert q3.layer_windows == [None, 4, 4] and p3.layer_windows == [4, 4, 4]
    # Gemma's (1 + w) norms are loaded as the 1 + w they multiply by
    model, path = family_ckpts["gemma3"]
    sd = frozenlm.load_blocks(str(path), [5]).layers[0].state_dict()
    ref = F.reference_layers(model)[5]
    assert torch.equal(sd["attn.q_norm.weight"], 1 + ref.self_attn.q_norm.weight)
    assert torch.equal(sd["ffn_post_norm.weight"], 1 + ref.post_feedforward_layernorm.weight)


def test_phi3_fused_split(family_ckpts):
    model, path = family_ckpts["phi3"]
    sd = frozenlm.load_blocks(str(path), [1]).layers[0].state_dict()
    ref = F.reference_layers(model)[1]
    q, kv = F.HEADS * F.DIM // F.HEADS, F.KV_HEADS * F.DIM // F.HEADS
    qkv, gate_up = ref.self_attn.qkv_proj.weight, ref.mlp.gate_up_proj.weight
    assert torch.equal(sd["attn.q.weight"], qkv[:q]) and torch.equal(sd["attn.v.weight"], qkv[q + kv:])
    assert torch.equal(sd["ffn.gate.weight"], gate_up[:96]) and torch.equal(sd["ffn.up.weight"], gate_up[96:])


def test_inspect_reports_the_family(family_ckpts, capsys):
    from frozenlm.cli import main
    info = describe_source(str(family_ckpts["gemma3"][1]), layer=5)
    assert info["problems"] == [] and info["qk_norm"] and info["post_norms"] and info["query_scale"] == 20
    assert info["sliding_window"] == {4: [0, 1, 2, 3, 4]}
    assert info["sliding_layers_rope"] == {"rope_theta": 10000.0, "rope_scaling": "none"}
    names = {t["name"].split("layers.5.")[1] for t in info["tensors"]}
    assert {"self_attn.q_norm.weight", "post_attention_layernorm.weight", "pre_feedforward_layernorm.weight",
            "post_feedforward_layernorm.weight"} <= names
    main(["inspect", str(family_ckpts["phi3"][1]), "--layer", "0"])
    out = capsys.readouterr().out
    assert "qkv_proj" in out and "every tensor of this layer matches the config" in out
    assert describe_source(str(family_ckpts["gemma2"][1]), layer=0)["attn_softcap"] == 3.0


# ------------------------------------------------------------------ GGUF (llama.cpp's layout)

@pytest.mark.parametrize("kind", FAMILIES)
def test_gguf_parity(tmp_path, kind):
    """A GGUF written the way llama.cpp converts the model gives the same blocks as transformers.
    query_pre_attn_scalar = head_dim here: llama.cpp does not store it (it uses head_dim except for
    the 27B Gemmas)."""
    # llama.cpp's Qwen3 has no sliding window
    kw = {"gemma2": {"query_pre_attn_scalar": F.NEW_HEAD_DIM}, "gemma3": {"query_pre_attn_scalar": F.NEW_HEAD_DIM},
          "qwen3": {"use_sliding_window": False}}.get(kind, {})
    model = F.make_model(kind, seed=50, std=STD, **kw)
    path = F.write_gguf(model, tmp_path / f"{kind}.gguf", arch=kind)
    cfg = frozenlm.source_config(str(path))
    hf_cfg = frozenlm.source_config(str(F.save_hf(model, tmp_path / kind)))
    for field in ("qk_norm", "post_norms", "query_scale", "attn_softcap", "act", "head_dim", "local_rope"):
        assert getattr(cfg, field) == getattr(hf_cfg, field), field
    if kind != "phi3":  # llama.cpp versions disagree on Phi-3's window: refused in the causal mode
        assert cfg.layer_windows == hf_cfg.layer_windows
        assert_causal_rope_parity(path, model, range(model.config.num_hidden_layers))
    else:
        with pytest.raises(ValueError, match=r"phi3\.attention\.sliding_window"):
            frozenlm.load_blocks(str(path), [0], mask="causal")
    x = torch.randn(B, N, F.DIM)
    with torch.no_grad():
        got = frozenlm.load_blocks(str(path), [1])(x)
    assert (got - paper_mode_reference(F.reference_layers(model)[1], x, cfg.head_dim)).abs().max().item() < TOL
    assert describe_source(str(path), layer=1)["problems"] == []


# ------------------------------------------------------------------ multimodal checkpoints

@pytest.mark.parametrize("kind", ["llava", "gemma3mm", "qwen2vl"])
def test_multimodal_language_model(tmp_path, kind):
    """The LM of LLaVA / Gemma 3 / Qwen2-VL: text_config (completed with transformers' defaults) and the
    `language_model.` layers, never the vision tower's layers of the same key pattern."""
    model, lm = F.make_multimodal(kind, seed=60)
    path = F.save_hf(model, tmp_path / kind)
    raw = json.loads((path / "config.json").read_text())
    assert raw["model_type"] in ("llava", "gemma3", "qwen2_vl") and "text_config" in raw
    cfg = frozenlm.source_config(str(path))
    assert (cfg.dim, cfg.n_layers) == (F.DIM, len(F.reference_layers(lm)))
    x = torch.randn(B, N, F.DIM)
    k = len(F.reference_layers(lm)) - 1
    with torch.no_grad():
        got = frozenlm.load_blocks(str(path), [k])(x)
    want = paper_mode_reference(F.reference_layers(lm)[k], x, cfg.head_dim)
    assert (got - want).abs().max().item() < TOL
    assert_causal_rope_parity(path, lm, (0, k))


# ------------------------------------------------------------------ refusals

def test_falcon_refused(tmp_path):
    d = tmp_path / "falcon"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "falcon", "hidden_size": 64}))
    with pytest.raises(CheckpointError, match=r"model_type='falcon' is not supported: Falcon's parallel"):
        frozenlm.source_config(str(d))


def test_bidirectional_gemma_refuses_causal(tmp_path, family_ckpts):
    import shutil
    path = tmp_path / "g3"
    shutil.copytree(family_ckpts["gemma3"][1], path)
    write_config(path, use_bidirectional_attention=True)
    with pytest.raises(ValueError, match="use_bidirectional_attention=true"):
        frozenlm.load_blocks(str(path), [0], mask="causal")
    frozenlm.load_blocks(str(path), [0], rope="1d")  # the paper's bidirectional mode: loads
