"""Synthetic checkpoints with the real LLaMA-7B shapes (about 13.5 GB in fp16) for load benchmarks.

The tensor data is zeros; what is measured (bytes read, memory held, parsing) does not depend on
the values. Safetensors shards are written as sparse files (a header, then a hole), so creating
them takes no time and no disk; the Meta `.pth` is a real torch zip written tensor by tensor from
a sparse file mapping, so peak memory while writing stays low.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterator

import torch

#: Architectures `frozenlm bench --lm` knows by name; speed and memory do not depend on the weights'
#: values, so they are benchmarked with random or zero weights. llama-7b also shapes the checkpoints below.
SHAPES = {
    "llama-7b": {"dim": 4096, "n_layers": 32, "n_heads": 32, "ffn_dim": 11008, "vocab": 32000, "norm_eps": 1e-6},
    "llama-13b": {"dim": 5120, "n_layers": 40, "n_heads": 40, "ffn_dim": 13824, "vocab": 32000, "norm_eps": 1e-6},
}


def meta_shapes(p: dict = SHAPES["llama-7b"]) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of a Meta consolidated checkpoint, in file order."""
    d, f, v = p["dim"], p["ffn_dim"], p["vocab"]
    yield "tok_embeddings.weight", (v, d)
    for i in range(p["n_layers"]):
        for w in ("wq", "wk", "wv", "wo"):
            yield f"layers.{i}.attention.{w}.weight", (d, d)
        yield f"layers.{i}.feed_forward.w1.weight", (f, d)
        yield f"layers.{i}.feed_forward.w2.weight", (d, f)
        yield f"layers.{i}.feed_forward.w3.weight", (f, d)
        yield f"layers.{i}.attention_norm.weight", (d,)
        yield f"layers.{i}.ffn_norm.weight", (d,)
    yield "norm.weight", (d,)
    yield "output.weight", (v, d)


def hf_shapes(p: dict = SHAPES["llama-7b"]) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of a Hugging Face LlamaForCausalLM checkpoint."""
    d, f, v = p["dim"], p["ffn_dim"], p["vocab"]
    yield "model.embed_tokens.weight", (v, d)
    for i in range(p["n_layers"]):
        pre = f"model.layers.{i}."
        for w in ("q", "k", "v", "o"):
            yield f"{pre}self_attn.{w}_proj.weight", (d, d)
        yield f"{pre}mlp.gate_proj.weight", (f, d)
        yield f"{pre}mlp.up_proj.weight", (f, d)
        yield f"{pre}mlp.down_proj.weight", (d, f)
        yield f"{pre}input_layernorm.weight", (d,)
        yield f"{pre}post_attention_layernorm.weight", (d,)
    yield "model.norm.weight", (d,)
    yield "lm_head.weight", (v, d)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def write_meta(out: str | Path, p: dict = SHAPES["llama-7b"], dtype: torch.dtype = torch.float16) -> Path:
    """`out/consolidated.00.pth` + `params.json`, every tensor its own storage (as Meta's files)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    largest = max(_numel(s) for _, s in meta_shapes(p)) * torch.tensor([], dtype=dtype).element_size()
    hole = out / ".zeros"
    with open(hole, "wb") as f:
        f.truncate(largest)  # sparse: reading it yields zeros without disk or anonymous memory
    state = {name: torch.from_file(str(hole), shared=False, size=_numel(shape), dtype=dtype).view(shape)
             for name, shape in meta_shapes(p)}
    tmp = out / "consolidated.00.pth.tmp"
    torch.save(state, tmp)
    os.replace(tmp, out / "consolidated.00.pth")
    hole.unlink()
    params = {"dim": p["dim"], "multiple_of": 256, "n_heads": p["n_heads"], "n_layers": p["n_layers"],
              "norm_eps": p["norm_eps"], "vocab_size": -1}
    (out / "params.json").write_text(json.dumps(params))
    return out


def write_hf_sharded(out: str | Path, p: dict = SHAPES["llama-7b"], dtype: str = "F16",
                     max_shard_bytes: int = 10_000_000_000) -> Path:
    """A sharded safetensors directory (`model-0000k-of-0000n.safetensors` + index + config.json)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    itemsize = {"F16": 2, "BF16": 2, "F32": 4}[dtype]
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in hf_shapes(p):
        nbytes = _numel(shape) * itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    weight_map = {}
    for k, shard in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        header: dict = {"__metadata__": {"format": "pt"}}
        off = 0
        for name, shape in shard:
            n = _numel(shape) * itemsize
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
            weight_map[name] = fname
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(out / fname, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            f.truncate(8 + len(raw) + off)
    total = sum(_numel(s) * itemsize for _, s in hf_shapes(p))
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": p["dim"],
              "intermediate_size": p["ffn_dim"], "num_attention_heads": p["n_heads"],
              "num_key_value_heads": p["n_heads"], "num_hidden_layers": p["n_layers"],
              "rms_norm_eps": p["norm_eps"], "rope_theta": 10000.0, "vocab_size": p["vocab"],
              "hidden_act": "silu", "torch_dtype": "float16"}
    (out / "config.json").write_text(json.dumps(config))
    return out


def dir_bytes(path: str | Path) -> int:
    """Apparent size of every file under `path` (what a copy or download would move)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
