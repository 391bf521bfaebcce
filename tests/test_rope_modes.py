"""rope="1d", mask="causal" reproduce the source LM exactly, or are refused with the key named.

The reference is transformers itself: a tiny random model (eager attention) is run on input
embeddings, and forward hooks record what each decoder layer receives and returns, so the model
builds its own causal / sliding-window masks and its own rotary embedding (scaling included) from
the config. frozenlm reads the saved files and must return the same layer outputs (< 1e-5, fp32).
Where a dynamic or LongRoPE table depends on the length, each length gets a fresh model (the
transformers module caches frequencies across calls). Sequences are longer than every window.
"""
from __future__ import annotations

import json

import pytest
import torch
import transformers as T

import ckpt_factory as F
import frozenlm

TOL = 1e-5
STD = 0.1  # weight scale: outputs of a few units, so fp32 rounding stays ~1e-6
B, N = 2, 24

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 256}  # head_dim 16, theta 1e4: all three frequency bands
SCALINGS = {
    "linear": ({"rope_type": "linear", "factor": 4.0}, {}),
    "llama3": (LLAMA3, {"max_position_embeddings": 512}),
    "yarn": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}, {}),
    "yarn_mscale": ({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 16, "beta_fast": 8.0,
                     "beta_slow": 2.0, "mscale": 0.8, "mscale_all_dim": 0.5, "truncate": False}, {}),
    "yarn_attention_factor": ({"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64,
                               "attention_factor": 1.3}, {}),
}
# length-dependent types: (rope parameters, config kw, lengths below and above the switch)
BY_LENGTH = {
    "dynamic": ({"rope_type": "dynamic", "factor": 3.0}, {"max_position_embeddings": 16}, (12, 40)),
    "longrope": ({"rope_type": "longrope", "original_max_position_embeddings": 16,
                  "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.0, 3.5],
                  "long_factor": [1.0, 1.5, 2.5, 4.0, 6.0, 8.0, 10.0, 12.0]},
                 {"max_position_embeddings": 64}, (12, 40)),
}


def layer_io(model: torch.nn.Module, x: torch.Tensor) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Inputs and outputs of every decoder layer of a transformers base model run on embeddings x."""
    ins: dict[int, torch.Tensor] = {}
    outs: dict[int, torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(F.reference_layers(model)):
        hooks.append(layer.register_forward_pre_hook(
            lambda m, a, kw, i=i: ins.__setitem__(i, (a[0] if a else kw["hidden_states"]).detach()),
            with_kwargs=True))
        hooks.append(layer.register_forward_hook(
            lambda m, a, o, i=i: outs.__setitem__(i, (o[0] if isinstance(o, tuple) else o).detach())))
    try:
        with torch.no_grad():
            model(inputs_embeds=x, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return ins, outs


def reference_from_files(path) -> torch.nn.Module:
    """transformers' own reading of the same config.json and weights (eager attention)."""
    return T.AutoModel.from_pretrained(str(path), attn_implementation="eager").eval()


def assert_layers_match(path, model, layers, n: int = N, seed: int = 0) -> None:
    """frozenlm's layer k (rope=1d, causal) equals transformers' decoder layer k for each k."""
    x = torch.randn(B, n, model.config.hidden_size, generator=torch.Generator().manual_seed(seed))
    ins, outs = layer_io(model, x)
    for k in layers:
        stack = frozenlm.load_blocks(str(path), [k], mask="causal", rope="1d")
        with torch.no_grad():
            got = stack(ins[k])
        err = (got - outs[k]).abs().max().item()
        assert err < TOL, f"{path.name} layer {k} (n={n}): max abs error {err:.3g}"


def write_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (path / "config.json").write_text(json.dumps(cfg))
    return path


# ------------------------------------------------------------------ RoPE scaling (HF files)

@pytest.mark.parametrize("name", sorted(SCALINGS))
def test_rope_scaling_parity(tmp_path, name):
    """transformers 5 files (`rope_parameters`): every scaling type equals the reference."""
    params, kw = SCALINGS[name]
    model = F.make_model("llama", seed=2, std=STD, rope_parameters={**params, "rope_theta": 10000.0}, **kw)
    path = F.save_hf(model, tmp_path / name)
    saved = json.loads((path / "config.json").read_text())["rope_parameters"]
    assert saved["rope_type"] == params["rope_type"]
    assert_layers_match(path, model, (0, F.LAYERS - 1))


@pytest.mark.parametrize("name", sorted(BY_LENGTH))
def test_length_dependent_rope_parity(tmp_path, name):
    """dynamic NTK and LongRoPE change with the length: checked below and above the switch."""
    params, kw, lengths = BY_LENGTH[name]
    model = F.make_model("llama", seed=3, std=STD, rope_parameters={**params, "rope_theta": 10000.0}, **kw)
    path = F.save_hf(model, tmp_path / name)
    for n in lengths:
        assert_layers_match(path, reference_from_files(path), (1,), n=n)


@pytest.mark.parametrize("type_key", ["type", "rope_type"])
@pytest.mark.parametrize("name", ["linear", "llama3", "yarn", "dynamic"])
def test_legacy_rope_scaling_json(tmp_path, name, type_key):
    """Older config.json files: top-level rope_theta and `rope_scaling` with `type` or `rope_type`."""
    params = dict(SCALINGS[name][0] if name in SCALINGS else BY_LENGTH[name][0])
    kw = dict(SCALINGS[name][1] if name in SCALINGS else BY_LENGTH[name][1])
    model = F.make_model("llama", seed=4, std=STD, **kw)
    path = F.save_hf(model, tmp_path / f"{name}_{type_key}")
    kind = params.pop("rope_type")
    write_config(path, rope_parameters=None, rope_theta=50000.0, rope_scaling={type_key: kind, **params})
    ref = reference_from_files(path)
    assert ref.config.rope_parameters["rope_type"] == kind and ref.config.rope_parameters["rope_theta"] == 50000.0
    assert_layers_match(path, ref, (0, 2), n=40 if name == "dynamic" else N)
    assert frozenlm.source_config(str(path)).rope_scaling["rope_type"] == kind


def test_top_level_original_max_position_embeddings(tmp_path):
    """A top-level original_max_position_embeddings (Phi-3 style) wins, as in transformers."""
    model = F.make_model("llama", seed=5, std=STD)
    path = F.save_hf(model, tmp_path / "orig")
    write_config(path, rope_parameters=None, original_max_position_embeddings=16,
                 rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64})
    assert_layers_match(path, reference_from_files(path), (1,))
    assert frozenlm.source_config(str(path)).rope_scaling["original_max_position_embeddings"] == 16


# ------------------------------------------------------------------ per-layer windows and NoPE

def test_mistral_sliding_window(tmp_path):
    model = F.make_model("mistral", seed=6, std=STD, sliding_window=4)
    path = F.save_hf(model, tmp_path / "mistral")
    assert_layers_match(path, model, range(F.LAYERS))
    stack = frozenlm.load_blocks(str(path), "0:", mask="causal", rope="1d")
    assert [b.window for b in stack.layers] == [4, 4, 4]
    # a config.json without the key gets MistralConfig's default window, as in transformers
    write_config(path, sliding_window=None)
    assert reference_from_files(path).config.sliding_window == 4096
    assert frozenlm.source_config(str(path)).layer_windows == [4096] * F.LAYERS


def test_mistral_layer_with_explicit_window_mask(tmp_path):
    """The standalone MistralDecoderLayer, the model's own rotary module, and the mask we mean:
    causal, each query seeing itself and the 3 keys before it (window 4)."""
    model = F.make_model("mistral", seed=7, std=STD, sliding_window=4)
    path = F.save_hf(model, tmp_path / "mistral")
    x = torch.randn(B, N, F.DIM)
    q, k = torch.arange(N)[:, None], torch.arange(N)[None, :]
    allow = (k <= q) & (k > q - 4)
    mask = torch.zeros(N, N).masked_fill(~allow, torch.finfo(torch.float32).min).expand(B, 1, N, N)
    cos_sin = model.rotary_emb(x, torch.arange(N)[None].expand(B, N))
    for layer_k in (0, 2):
        with torch.no_grad():
            want = F.reference_layers(model)[layer_k](x, attention_mask=mask, position_embeddings=cos_sin)
            got = frozenlm.load_blocks(str(path), [layer_k], mask="causal", rope="1d")(x)
        want = want[0] if isinstance(want, tuple) else want
        assert (got - want).abs().max().item() < TOL


@pytest.mark.parametrize("legacy", [False, True])
def test_qwen2_sliding_layers(tmp_path, legacy):
    """use_sliding_window + max_window_layers: layers >= 2 use the window (transformers' reading);
    with transformers 5's layer_types list, and without it (older files)."""
    model = F.make_model("qwen2", seed=8, std=STD, num_hidden_layers=4, use_sliding_window=True, sliding_window=4,
                         max_window_layers=2)
    path = F.save_hf(model, tmp_path / "qwen2")
    if legacy:
        write_config(path, layer_types=None)
        model = reference_from_files(path)
    assert model.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    assert_layers_match(path, model, range(4))
    # a stack spanning both kinds of layer equals the two reference layers in sequence
    x = torch.randn(B, N, F.DIM)
    ins, outs = layer_io(model, x)
    with torch.no_grad():
        got = frozenlm.load_blocks(str(path), "1:3", mask="causal", rope="1d")(ins[1])
    assert (got - outs[2]).abs().max().item() < TOL
    stack = frozenlm.load_blocks(str(path), "0:", mask="causal", rope="1d")
    assert [b.window for b in stack.layers] == [None, None, 4, 4]


@pytest.mark.parametrize("sliding", [False, True])
def test_smollm3_no_rope_layers(tmp_path, sliding):
    """SmolLM3: every 4th layer has no RoPE (and, with use_sliding_window, a window)."""
    kw = {"use_sliding_window": True, "sliding_window": 4} if sliding else {}
    model = F.make_model("smollm3", seed=9, std=STD, **kw)
    path = F.save_hf(model, tmp_path / "smollm3")
    assert model.config.no_rope_layers == [1, 1, 1, 0]
    assert_layers_match(path, model, range(4))
    stack = frozenlm.load_blocks(str(path), "0:", mask="causal", rope="1d")
    assert [b.use_rope for b in stack.layers] == [True, True, True, False]
    assert [b.window for b in stack.layers] == [None, None, None, 4 if sliding else None]


def test_smollm3_explicit_no_rope_layers(tmp_path):
    model = F.make_model("smollm3", seed=10, std=STD, no_rope_layers=[0, 1, 0, 1])
    path = F.save_hf(model, tmp_path / "smollm3")
    assert_layers_match(path, model, range(4))
    assert frozenlm.source_config(str(path)).layer_rope == [False, True, False, True]


# ------------------------------------------------------------------ Meta params.json

@pytest.mark.parametrize("factor", [8.0, 32.0])
def test_meta_use_scaled_rope(tmp_path, factor):
    """params.json use_scaled_rope + rope_scaling_factor = transformers' llama3 scaling (1, 4, 8192)."""
    params = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192, "rope_theta": 500000.0}
    model = F.make_model("llama", seed=11, std=STD, max_position_embeddings=16384, rope_parameters=params)
    path = F.write_meta(model, tmp_path / "meta31", rope_theta=500000.0, use_scaled_rope=True,
                        rope_scaling_factor=factor)
    assert_layers_match(path, model, (0, F.LAYERS - 1), n=200)
    assert frozenlm.source_config(str(path)).rope_key == "params.json use_scaled_rope"


def test_meta_use_scaled_rope_without_factor_refused(tmp_path, llama_ckpts):
    """Llama 3.1 and 3.2 params.json files both say only use_scaled_rope=true, yet their factors
    differ (8 / 32): rope='1d' asks for the factor instead of guessing."""
    path = F.write_meta(llama_ckpts["model"], tmp_path / "meta3x", rope_theta=500000.0, use_scaled_rope=True)
    with pytest.raises(ValueError, match=r"use_scaled_rope=true but no rope_scaling_factor.*8 or 32"):
        frozenlm.load_blocks(str(path), [0], rope="1d")
    frozenlm.load_blocks(str(path), [0], mask="causal")  # no RoPE: nothing to reproduce


def test_meta_rope_scaling_dict(tmp_path):
    model = F.make_model("llama", seed=12, std=STD, rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                                      "rope_theta": 10000.0})
    path = F.write_meta(model, tmp_path / "meta_linear", rope_scaling={"type": "linear", "factor": 2.0})
    assert_layers_match(path, model, (1,))


def test_meta_unknown_rope_scaling_refused(tmp_path, llama_ckpts):
    path = F.write_meta(llama_ckpts["model"], tmp_path / "meta_odd", rope_scaling={"rope_type": "su", "factor": 2})
    with pytest.raises(ValueError, match=r"params.json rope_scaling has rope_type='su'"):
        frozenlm.load_blocks(str(path), [0], rope="1d")
    frozenlm.load_blocks(str(path), [0])  # the paper's mode does not use RoPE: loads


# ------------------------------------------------------------------ GGUF metadata

def test_gguf_rope_freqs_tensor_is_llama3(tmp_path):
    """llama.cpp stores llama3 scaling as a rope_freqs tensor (convert_hf_to_gguf.py's factors)."""
    model = F.make_model("llama", seed=13, std=STD, max_position_embeddings=512,
                         rope_parameters={**LLAMA3, "rope_theta": 10000.0})
    factors = F.llama_cpp_rope_factors(LLAMA3, theta=10000.0, head_dim=F.DIM // F.HEADS)
    path = F.write_gguf(model, tmp_path / "llama3.gguf", extra=lambda w: w.add_tensor("rope_freqs.weight", factors))
    assert_layers_match(path, model, (0, F.LAYERS - 1))
    assert frozenlm.source_config(str(path)).rope_scaling["rope_type"] == "freq_factors"


def test_gguf_linear_scaling(tmp_path):
    import gguf
    model = F.make_model("llama", seed=14, std=STD, rope_parameters={"rope_type": "linear", "factor": 4.0,
                                                                      "rope_theta": 10000.0})

    def linear(w):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(4.0)

    path = F.write_gguf(model, tmp_path / "linear.gguf", extra=linear)
    assert_layers_match(path, model, (1,))


def test_gguf_yarn_refused(tmp_path, llama_ckpts):
    import gguf

    def yarn(w):
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(4.0)

    path = F.write_gguf(llama_ckpts["model"], tmp_path / "yarn.gguf", extra=yarn)
    with pytest.raises(ValueError, match=r"GGUF metadata llama\.rope\.scaling\.type='yarn'"):
        frozenlm.load_blocks(str(path), [0], rope="1d")
    frozenlm.load_blocks(str(path), [0], mask="causal")  # no RoPE: nothing to reproduce


def test_gguf_sliding_window(tmp_path):
    """mistral: the window applies to every layer, as in transformers' Mistral; llama: it is not
    recorded which layers use it, so the causal mode is refused."""
    model = F.make_model("mistral", seed=15, std=STD, sliding_window=4)
    path = F.write_gguf(model, tmp_path / "mistral.gguf", arch="mistral", extra=lambda w: w.add_sliding_window(4))
    assert_layers_match(path, model, (0, 2))
    path = F.write_gguf(model, tmp_path / "llama_sw.gguf", arch="llama", extra=lambda w: w.add_sliding_window(4))
    with pytest.raises(ValueError, match=r"mask='causal'.*llama\.attention\.sliding_window=4"):
        frozenlm.load_blocks(str(path), [0], mask="causal")
    frozenlm.load_blocks(str(path), [0], rope="1d")  # bidirectional: no window to apply


# ------------------------------------------------------------------ refusals name the key

@pytest.mark.parametrize("changes,mode,needle", [
    ({"rope_parameters": {"rope_type": "su", "factor": 2.0, "rope_theta": 1e4}}, "rope",
     r"config.json rope_parameters has rope_type='su'"),
    ({"rope_parameters": None, "rope_scaling": {"type": "proportional", "factor": 2.0}}, "rope",
     r"config.json rope_scaling has rope_type='proportional'"),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4}}, "rope",
     r"rope_parameters \(rope_type='llama3'\) lacks \['low_freq_factor', 'high_freq_factor'\]"),
    ({"partial_rotary_factor": 0.5}, "rope", r"config.json partial_rotary_factor=0.5"),
    ({"rope_parameters": {"full_attention": {"rope_type": "default"}, "sliding_attention": {"rope_type": "default"}}},
     "rope", r"one RoPE per layer type"),
])
def test_unreproducible_rope_is_refused(llama_ckpts, tmp_path, changes, mode, needle):
    import shutil
    path = tmp_path / "odd"
    shutil.copytree(llama_ckpts["hf"], path)
    write_config(path, **changes)
    with pytest.raises(ValueError, match=needle):
        frozenlm.load_blocks(str(path), [0], mask="causal", rope="1d")
    frozenlm.load_blocks(str(path), [0])  # the paper's mode is unaffected


def test_inconsistent_qwen2_layer_types_refused(tmp_path):
    model = F.make_model("qwen2", seed=16, std=STD, num_hidden_layers=4)
    path = F.save_hf(model, tmp_path / "qwen2")
    write_config(path, use_sliding_window=False, layer_types=["full_attention"] * 3 + ["sliding_attention"])
    with pytest.raises(ValueError, match=r"layer_types marks layers \[3\] as sliding_attention"):
        frozenlm.load_blocks(str(path), [3], mask="causal")
    write_config(path, layer_types=["full_attention"] * 3)
    with pytest.raises(ValueError, match=r"layer_types has 3 entries for 4 layers"):
        frozenlm.load_blocks(str(path), [0], mask="causal")
    frozenlm.load_blocks(str(path), [0], rope="1d")  # bidirectional: the layer types do not matter


# ------------------------------------------------------------------ the paper's mode is unchanged

@pytest.mark.parametrize("kind,kw", [("mistral", {"sliding_window": 4}),
                                     ("smollm3", {"use_sliding_window": True, "sliding_window": 4}),
                                     ("llama", {"rope_parameters": {**LLAMA3, "rope_theta": 1e4},
                                                "max_position_embeddings": 512})])
def test_paper_mode_ignores_windows_and_scaling(tmp_path, kind, kw):
    """rope='none', mask='none': bidirectional, no RoPE, no window (intentionally), as before
    (a guard: this passes on 6eacb47 too)."""
    model = F.make_model(kind, seed=17, std=STD, **kw)
    path = F.save_hf(model, tmp_path / kind)
    n_layers = len(F.reference_layers(model))
    stack = frozenlm.load_blocks(str(path), "0:")
    x = torch.randn(B, N, F.DIM)
    no_rotation = (torch.ones(B, N, F.DIM // F.HEADS), torch.zeros(B, N, F.DIM // F.HEADS))
    everything = torch.zeros(B, 1, N, N)
    want = x
    with torch.no_grad():
        for layer in F.reference_layers(model):
            want = layer(want, attention_mask=everything, position_embeddings=no_rotation)
            want = want[0] if isinstance(want, tuple) else want
        got = stack(x)
    assert stack.layer_indices == list(range(n_layers))
    assert (got - want).abs().max().item() < TOL


def test_causal_window_without_rope(tmp_path):
    """mask='causal' alone (rope='none') still applies the source's window."""
    model = F.make_model("mistral", seed=18, std=STD, sliding_window=4)
    path = F.save_hf(model, tmp_path / "mistral")
    x = torch.randn(B, N, F.DIM)
    q, k = torch.arange(N)[:, None], torch.arange(N)[None, :]
    mask = torch.zeros(N, N).masked_fill(~((k <= q) & (k > q - 4)), torch.finfo(torch.float32).min)
    no_rotation = (torch.ones(B, N, F.DIM // F.HEADS), torch.zeros(B, N, F.DIM // F.HEADS))
    with torch.no_grad():
        want = F.reference_layers(model)[1](x, attention_mask=mask.expand(B, 1, N, N), position_embeddings=no_rotation)
        got = frozenlm.load_blocks(str(path), [1], mask="causal")(x)
    want = want[0] if isinstance(want, tuple) else want
    assert (got - want).abs().max().item() < TOL


def test_window_mask_semantics():
    """Window 3: each query sees itself and the two keys before it; pads still hidden."""
    from frozenlm.lm.stack import build_attention_mask
    m = build_attention_mask(5, True, None, torch.device("cpu"), window=3)[0, 0].int()
    assert m.tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1]]
    pad = torch.tensor([[False, True, False, False, False]])
    m = build_attention_mask(5, True, pad, torch.device("cpu"), window=3)[0, 0].int()
    assert m[:, 1].tolist() == [0, 1, 0, 0, 0]  # only the pad itself looks at the pad
