"""Loading one layer of a >= 1 GB checkpoint keeps peak RSS near the layer's size.

The checkpoints are generated here (LLaMA-shaped, 5 layers of ~206 MB in float32): an HF
safetensors directory, a Meta consolidated.00.pth (+ params.json) and a GGUF. A fresh Python
process imports torch + frozenlm, resets its high-water mark, loads ONE layer with
`load_blocks`, and reports the growth of its peak RSS (VmHWM). Reading the whole file, or
materialising every layer, would push the peak to >= the file size.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

DIM, HEADS, LAYERS, MULTIPLE_OF = 2048, 16, 5, 256
FFN = MULTIPLE_OF * ((int(2 * 4 * DIM / 3) + MULTIPLE_OF - 1) // MULTIPLE_OF)  # 5632, as Meta derives it
LAYER_BYTES = (4 * DIM * DIM + 3 * DIM * FFN + 2 * DIM) * 4

pytestmark = pytest.mark.slow

PROBE = textwrap.dedent("""
    import json, re, sys, time
    def status():
        s = open("/proc/self/status").read()
        return {k: int(re.search(k + r":\\s+(\\d+)", s).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}
    import torch, frozenlm
    torch.set_num_threads(1)
    base = status()["VmRSS"]
    open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
    t = time.time()
    stack = frozenlm.load_blocks(sys.argv[1], [int(sys.argv[2])])
    dt = time.time() - t
    # Touch every weight (as a forward pass would): memory-mapped pages then count in RSS too.
    total = sum(float(p.double().sum()) if p.numel() < 10**6 else float(p.sum()) for p in stack.parameters())
    assert total == total  # finite, read
    n = sum(p.numel() * p.element_size() for p in stack.parameters())
    print(json.dumps({"base": base, "peak": status()["VmHWM"], "layer_bytes": n, "seconds": dt,
                      "index": stack.layer_indices}))
""")


def _layer(g: torch.Generator) -> dict[str, torch.Tensor]:
    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.02
    return {"q": r(DIM, DIM), "k": r(DIM, DIM), "v": r(DIM, DIM), "o": r(DIM, DIM),
            "gate": r(FFN, DIM), "up": r(FFN, DIM), "down": r(DIM, FFN),
            "attn_norm": torch.ones(DIM), "ffn_norm": torch.ones(DIM)}


HF = {"q": "self_attn.q_proj.weight", "k": "self_attn.k_proj.weight", "v": "self_attn.v_proj.weight",
      "o": "self_attn.o_proj.weight", "gate": "mlp.gate_proj.weight", "up": "mlp.up_proj.weight",
      "down": "mlp.down_proj.weight", "attn_norm": "input_layernorm.weight",
      "ffn_norm": "post_attention_layernorm.weight"}
META = {"q": "attention.wq.weight", "k": "attention.wk.weight", "v": "attention.wv.weight",
        "o": "attention.wo.weight", "gate": "feed_forward.w1.weight", "up": "feed_forward.w3.weight",
        "down": "feed_forward.w2.weight", "attn_norm": "attention_norm.weight", "ffn_norm": "ffn_norm.weight"}
GGUF = {"q": "attn_q.weight", "k": "attn_k.weight", "v": "attn_v.weight", "o": "attn_output.weight",
        "gate": "ffn_gate.weight", "up": "ffn_up.weight", "down": "ffn_down.weight",
        "attn_norm": "attn_norm.weight", "ffn_norm": "ffn_norm.weight"}


@pytest.fixture(scope="module")
def big_ckpts(tmp_path_factory):
    """{format: (path, file bytes)}; files are deleted when the module's tests are done."""
    from safetensors.torch import save_file
    import gguf
    root = tmp_path_factory.mktemp("big")
    g = torch.Generator().manual_seed(0)
    layers = [_layer(g) for _ in range(LAYERS)]
    emb = torch.randn(32, DIM, generator=g)
    out = {}
    # Hugging Face safetensors
    hf = root / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": DIM, "num_attention_heads": HEADS, "num_key_value_heads": HEADS,
        "intermediate_size": FFN, "num_hidden_layers": LAYERS, "rms_norm_eps": 1e-5, "vocab_size": 32}))
    sd = {f"model.layers.{i}.{HF[k]}": t for i, lay in enumerate(layers) for k, t in lay.items()}
    sd["model.embed_tokens.weight"] = emb
    save_file(sd, str(hf / "model.safetensors"))
    out["hf"] = (hf, (hf / "model.safetensors").stat().st_size)
    # Meta consolidated
    meta = root / "meta"
    meta.mkdir()
    (meta / "params.json").write_text(json.dumps({"dim": DIM, "n_heads": HEADS, "n_layers": LAYERS,
                                                  "multiple_of": MULTIPLE_OF, "norm_eps": 1e-5}))
    sd = {f"layers.{i}.{META[k]}": t for i, lay in enumerate(layers) for k, t in lay.items()}
    sd["tok_embeddings.weight"] = emb
    torch.save(sd, meta / "consolidated.00.pth")
    out["meta"] = (meta, (meta / "consolidated.00.pth").stat().st_size)
    del sd
    # GGUF (F32)
    path = root / "big.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(LAYERS)
    w.add_context_length(2048)
    w.add_embedding_length(DIM)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tensor("token_embd.weight", emb.numpy())
    for i, lay in enumerate(layers):
        for k, t in lay.items():
            w.add_tensor(f"blk.{i}.{GGUF[k]}", t.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out["gguf"] = (path, path.stat().st_size)
    del layers
    yield out
    for p, _ in out.values():
        if p.is_dir():
            for f in p.iterdir():
                f.unlink()
        else:
            p.unlink()


@pytest.mark.parametrize("fmt", ["hf", "meta", "gguf"])
@pytest.mark.parametrize("index", [-1, 1])
def test_one_layer_peak_rss(big_ckpts, fmt, index):
    path, file_bytes = big_ckpts[fmt]
    assert file_bytes >= 1_000_000_000
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", PROBE, str(path), str(index)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["index"] == [index % LAYERS]
    assert res["layer_bytes"] == LAYER_BYTES
    grown = res["peak"] - res["base"]
    print(f"{fmt} layer {index}: file {file_bytes / 2**20:.0f} MiB, layer {LAYER_BYTES / 2**20:.0f} MiB, "
          f"peak RSS growth {grown / 2**20:.0f} MiB ({grown / LAYER_BYTES:.2f}x layer), {res['seconds']:.1f} s")
    assert grown < 2.0 * LAYER_BYTES + 64 * 2**20, f"{fmt}: peak grew {grown / LAYER_BYTES:.2f}x the layer size"
    assert grown < 0.5 * file_bytes
