"""Writers of tiny random checkpoints in the real on-disk formats (used by the test suite).

Every writer starts from a `transformers` model (the reference) so tests can compare what
frozenlm reads against the reference's own tensors:
  - Hugging Face `save_pretrained` (safetensors unsharded / sharded, pytorch_model.bin)
  - Meta consolidated `params.json` + `consolidated.NN.pth` (model-parallel shards, q/k in
    Meta's interleaved rotary row order, plus the top-level `rope.freqs` key)
  - GGUF written with `gguf.GGUFWriter` (llama: q/k permuted into llama.cpp order; qwen2: not)
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

# Small shapes: dim 64, 4 heads of 16, 2 KV heads (GQA), 3 layers.
DIM, HEADS, KV_HEADS, LAYERS = 64, 4, 2, 3
MULTIPLE_OF = 32
# Meta derives the SwiGLU width from dim: int(2*4*64/3)=170 -> rounded up to a multiple of 32.
LLAMA_FFN = MULTIPLE_OF * ((int(2 * 4 * DIM / 3) + MULTIPLE_OF - 1) // MULTIPLE_OF)


def randomize_(model: nn.Module, seed: int = 0, std: float = 0.2) -> nn.Module:
    """Overwrite every parameter with random values (norm weights around 1, biases non-zero).

    HF's own init leaves norms at 1 and biases at 0, which would hide swapped/missing norm or
    bias tensors; random values make every tensor matter.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "norm" in name.lower() and p.ndim == 1 and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * r)
            else:
                p.copy_(std * r)
    return model.eval()


def _eager(cfg):
    cfg._attn_implementation = "eager"
    return cfg


def llama_config(**kw):
    from transformers import LlamaConfig
    args = dict(hidden_size=DIM, intermediate_size=LLAMA_FFN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                num_key_value_heads=KV_HEADS, rms_norm_eps=1e-5, vocab_size=97, max_position_embeddings=128,
                tie_word_embeddings=False)
    args.update(kw)
    return _eager(LlamaConfig(**args))


def qwen2_config(**kw):
    from transformers import Qwen2Config
    args = dict(hidden_size=DIM, intermediate_size=96, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                num_key_value_heads=KV_HEADS, rms_norm_eps=1e-6, vocab_size=97, max_position_embeddings=128,
                tie_word_embeddings=False)
    args.update(kw)
    return _eager(Qwen2Config(**args))


def mistral_config(**kw):
    from transformers import MistralConfig
    args = dict(hidden_size=DIM, intermediate_size=96, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                num_key_value_heads=KV_HEADS, rms_norm_eps=1e-5, vocab_size=97, max_position_embeddings=128,
                sliding_window=4, tie_word_embeddings=False)
    args.update(kw)
    return _eager(MistralConfig(**args))


def smollm3_config(**kw):
    from transformers import SmolLM3Config
    args = dict(hidden_size=DIM, intermediate_size=96, num_hidden_layers=4, num_attention_heads=HEADS,
                num_key_value_heads=KV_HEADS, rms_norm_eps=1e-6, vocab_size=97, max_position_embeddings=128,
                tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    args.update(kw)
    return _eager(SmolLM3Config(**args))


# Gemma 2/3, Qwen3, Phi-3: head_dim 24 (heads * head_dim = 96 != dim 64), windows of 4 tokens
NEW_HEAD_DIM, WINDOW = 24, 4
_SMALL = dict(hidden_size=DIM, intermediate_size=96, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
              vocab_size=97, max_position_embeddings=128, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1,
              eos_token_id=2)


def gemma2_config(**kw):
    from transformers import Gemma2Config
    args = dict(_SMALL, num_hidden_layers=4, head_dim=NEW_HEAD_DIM, sliding_window=WINDOW, query_pre_attn_scalar=20,
                attn_logit_softcapping=3.0, rms_norm_eps=1e-6)
    args.update(kw)
    return _eager(Gemma2Config(**args))


def gemma3_config(**kw):
    """6 layers: 0-4 slide, 5 is global (transformers' and llama.cpp's default pattern)."""
    from transformers import Gemma3TextConfig
    args = dict(_SMALL, num_hidden_layers=6, head_dim=NEW_HEAD_DIM, sliding_window=WINDOW, query_pre_attn_scalar=20,
                rms_norm_eps=1e-6)
    args.update(kw)
    return _eager(Gemma3TextConfig(**args))


def qwen3_config(**kw):
    """Layers >= 1 use the sliding window."""
    from transformers import Qwen3Config
    args = dict(_SMALL, num_hidden_layers=3, head_dim=NEW_HEAD_DIM, use_sliding_window=True, sliding_window=WINDOW,
                max_window_layers=1, rms_norm_eps=1e-6)
    args.update(kw)
    return _eager(Qwen3Config(**args))


def phi3_config(**kw):
    from transformers import Phi3Config
    args = dict(_SMALL, num_hidden_layers=3, sliding_window=WINDOW, rms_norm_eps=1e-5,
                original_max_position_embeddings=128)
    args.update(kw)
    return _eager(Phi3Config(**args))


def opt_config(**kw):
    from transformers import OPTConfig
    args = dict(hidden_size=DIM, ffn_dim=128, num_hidden_layers=LAYERS, num_attention_heads=HEADS, vocab_size=97,
                max_position_embeddings=128, word_embed_proj_dim=DIM, do_layer_norm_before=True)
    args.update(kw)
    return _eager(OPTConfig(**args))


def gpt2_config(**kw):
    from transformers import GPT2Config
    args = dict(n_embd=DIM, n_head=HEADS, n_layer=LAYERS, n_positions=128, vocab_size=97)
    args.update(kw)
    return _eager(GPT2Config(**args))


def bert_config(**kw):
    from transformers import BertConfig
    args = dict(hidden_size=DIM, num_attention_heads=HEADS, intermediate_size=128, num_hidden_layers=LAYERS,
                vocab_size=97, max_position_embeddings=128)
    args.update(kw)
    return _eager(BertConfig(**args))


def make_model(kind: str, seed: int = 0, std: float = 0.2, **kw) -> nn.Module:
    """A randomised transformers base model: llama, qwen2, mistral, smollm3, opt, opt-postln, gpt2, bert,
    gemma2, gemma3, qwen3 or phi3."""
    import transformers as T
    builders = {
        "llama": (T.LlamaModel, llama_config), "qwen2": (T.Qwen2Model, qwen2_config),
        "mistral": (T.MistralModel, mistral_config), "smollm3": (T.SmolLM3Model, smollm3_config),
        "opt": (T.OPTModel, opt_config), "gpt2": (T.GPT2Model, gpt2_config), "bert": (T.BertModel, bert_config),
        "gemma2": (T.Gemma2Model, gemma2_config), "gemma3": (T.Gemma3TextModel, gemma3_config),
        "qwen3": (T.Qwen3Model, qwen3_config), "phi3": (T.Phi3Model, phi3_config),
    }
    if kind == "opt-postln":
        kw.setdefault("do_layer_norm_before", False)
        kind = "opt"
    cls, cfg = builders[kind]
    torch.manual_seed(seed)
    return randomize_(cls(cfg(**kw)), seed=seed, std=std)


def reference_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder/encoder layers of a transformers base model."""
    for path in ("layers", "decoder.layers", "h", "encoder.layer"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise AttributeError(f"no layer list in {type(model).__name__}")


def make_multimodal(kind: str, seed: int = 0, std: float = 0.1) -> tuple[nn.Module, nn.Module]:
    """A randomised tiny LLaVA (Llama LM + CLIP tower), Gemma 3 (Gemma 3 LM + SigLIP tower) or Qwen2-VL model,
    and its language model (the reference for the blocks read back)."""
    import transformers as T
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    torch.manual_seed(seed)
    if kind == "llava":
        model = T.LlavaForConditionalGeneration(T.LlavaConfig(
            text_config=llama_config(), vision_config=T.CLIPVisionConfig(**vision)))
    elif kind == "gemma3mm":
        model = T.Gemma3ForConditionalGeneration(T.Gemma3Config(
            text_config=gemma3_config(), vision_config=T.SiglipVisionConfig(**vision), mm_tokens_per_image=4))
    else:
        model = T.Qwen2VLForConditionalGeneration(T.Qwen2VLConfig(
            # mrope_section: the t/h/w parts of each head's rotary frequencies (8 for head_dim 16)
            text_config=qwen2_config(rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                                      "rope_theta": 1e4}),
            vision_config=dict(depth=1, embed_dim=32, num_heads=2, hidden_size=DIM)))
    model.config._attn_implementation = "eager"
    model.model.language_model.config._attn_implementation = "eager"
    randomize_(model, seed=seed, std=std)
    return model, model.model.language_model


def save_hf(model: nn.Module, path: Path, **kw) -> Path:
    """`save_pretrained` into `path` (kw: max_shard_size)."""
    model.save_pretrained(str(path), **kw)
    return path


def save_hf_bin(model: nn.Module, path: Path, layer_order: list[int] | None = None) -> Path:
    """The legacy Hugging Face layout: config.json + pytorch_model.bin (a torch.save'd state dict).

    transformers 5 writes safetensors even with safe_serialization=False, so the .bin is written
    the way transformers 4 (and every older Hub checkpoint) did: torch.save(state_dict).
    `layer_order` lists the layers in the order their keys are written (default: 0, 1, ...).
    """
    path.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(str(path))
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save({k: sd[k] for k in in_layer_order(sd, layer_order)}, path / "pytorch_model.bin")
    return path


def save_hf_bin_sharded(model: nn.Module, path: Path, n_shards: int = 3,
                        layer_order: list[int] | None = None) -> Path:
    """Sharded legacy layout: pytorch_model-0000k-of-0000n.bin files + pytorch_model.bin.index.json,
    the index's weight_map (and each shard's keys) listed in `layer_order`."""
    path.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(str(path))
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    keys = in_layer_order(sd, layer_order)
    names = [f"pytorch_model-{j + 1:05d}-of-{n_shards:05d}.bin" for j in range(n_shards)]
    weight_map = {k: names[j * n_shards // len(keys)] for j, k in enumerate(keys)}
    for name in names:
        torch.save({k: sd[k] for k in keys if weight_map[k] == name}, path / name)
    (path / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


_LAYER_NO = re.compile(r"(?:^|\.)(\d+)\.")


def layer_of(key: str) -> int | None:
    """The layer number in a state-dict key ('model.layers.10.mlp...' -> 10), or None."""
    m = _LAYER_NO.search(key)
    return int(m.group(1)) if m else None


def in_layer_order(keys, layer_order: list[int] | None) -> list[str]:
    """`keys` with every layer's keys grouped in `layer_order` (other keys first, in their order)."""
    keys = list(keys)
    if layer_order is None:
        return keys
    rank = {n: i for i, n in enumerate(layer_order)}
    return sorted(keys, key=lambda k: -1 if layer_of(k) is None else rank[layer_of(k)])


def reorder_index(path: Path, layer_order: list[int]) -> Path:
    """Rewrite an HF shard index so its weight_map lists the layers in `layer_order`."""
    idx = next(path.glob("*.index.json"))
    data = json.loads(idx.read_text())
    wm = data["weight_map"]
    data["weight_map"] = {k: wm[k] for k in in_layer_order(wm, layer_order)}
    idx.write_text(json.dumps(data))
    return path


# ---------------------------------------------------------------- Meta consolidated

def to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF (rotate_half) q/k row order -> Meta / llama.cpp interleaved order.

    Written independently of frozenlm.lm.readers.unpermute_rotary (this is the permutation
    of transformers' convert_llama_weights_to_hf.py and llama.cpp's convert script).
    """
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


META_NAMES = {
    "self_attn.q_proj.weight": "attention.wq.weight", "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight", "self_attn.o_proj.weight": "attention.wo.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight", "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight", "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
# Meta model parallelism: ColumnParallelLinear (dim 0) and RowParallelLinear (dim 1).
META_COLUMN = ("wq", "wk", "wv", "w1", "w3")
META_ROW = ("wo", "w2")


def meta_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded) Meta-format state dict from a transformers LlamaModel."""
    cfg = model.config
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {"tok_embeddings.weight": sd["embed_tokens.weight"].clone(),
                                    "norm.weight": sd["norm.weight"].clone()}
    for i in range(cfg.num_hidden_layers):
        for hf, meta in META_NAMES.items():
            w = sd[f"layers.{i}.{hf}"].clone()
            if hf == "self_attn.q_proj.weight":
                w = to_interleaved(w, cfg.num_attention_heads)
            elif hf == "self_attn.k_proj.weight":
                w = to_interleaved(w, cfg.num_key_value_heads)
            out[f"layers.{i}.{meta}"] = w
    out["output.weight"] = torch.randn(cfg.vocab_size, cfg.hidden_size)
    hd = cfg.hidden_size // cfg.num_attention_heads
    out["rope.freqs"] = 1.0 / 10000.0 ** (torch.arange(0, hd, 2).float() / hd)
    return out


def shard_meta(sd: dict[str, torch.Tensor], n: int) -> list[dict[str, torch.Tensor]]:
    """Split a Meta state dict the way model parallelism stores it across `n` consolidated files."""
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(n)]
    for k, v in sd.items():
        kind = k.split(".")[-2] if k.endswith(".weight") else ""
        if k in ("tok_embeddings.weight",):
            parts = v.chunk(n, dim=1)  # ParallelEmbedding splits the embedding dim
        elif k == "output.weight" or kind in META_COLUMN:
            parts = v.chunk(n, dim=0)
        elif kind in META_ROW:
            parts = v.chunk(n, dim=1)
        else:  # norms, rope.freqs: replicated
            parts = [v] * n
        for s, p in zip(shards, parts):
            s[k] = p.clone()
    return shards


def write_meta(model: nn.Module, path: Path, n_shards: int = 1, layer_order: list[int] | None = None,
               **params_extra) -> Path:
    """params.json + consolidated.NN.pth from a transformers LlamaModel (weights exactly the HF ones).

    `layer_order`: order of the layers' keys inside each shard; `params_extra`: more params.json keys."""
    cfg = model.config
    path.mkdir(parents=True, exist_ok=True)
    params = {"dim": cfg.hidden_size, "n_layers": cfg.num_hidden_layers, "n_heads": cfg.num_attention_heads,
              "n_kv_heads": cfg.num_key_value_heads, "multiple_of": MULTIPLE_OF, "norm_eps": cfg.rms_norm_eps,
              "vocab_size": -1, **params_extra}
    (path / "params.json").write_text(json.dumps(params))
    for j, shard in enumerate(shard_meta(meta_state_dict(model), n_shards)):
        torch.save({k: shard[k] for k in in_layer_order(shard, layer_order)}, path / f"consolidated.{j:02d}.pth")
    return path


# ---------------------------------------------------------------- GGUF

GGUF_GEMMA_NAMES = {  # llama.cpp's names for Gemma's four norms
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight", "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
}
GGUF_PHI3_NAMES = {"self_attn.qkv_proj.weight": "attn_qkv.weight", "mlp.gate_up_proj.weight": "ffn_up.weight"}
GGUF_NAMES = {
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight", "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
}


def write_gguf(model: nn.Module, path: Path, arch: str = "llama", layer_order: list[int] | None = None,
               extra=None) -> Path:
    """A GGUF file (F32 tensors) from a transformers Llama / Qwen2 / Qwen3 / Phi-3 / Gemma 2/3 base model, as
    llama.cpp's convert_hf_to_gguf.py converts it (q/k rows permuted for llama/mistral, Gemma norms stored
    as 1 + w, Phi-3's fused tensors kept fused, Gemma's sliding window and soft-cap in the metadata).

    `layer_order`: order in which the layers' tensors are written; `extra(writer)` adds more
    metadata or tensors (e.g. RoPE scaling keys) before the layers."""
    import gguf
    cfg = model.config
    sd = model.state_dict()
    gemma = arch in ("gemma2", "gemma3")
    names = {**GGUF_NAMES, **(GGUF_GEMMA_NAMES if gemma else {}), **(GGUF_PHI3_NAMES if arch == "phi3" else {})}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    rope = getattr(cfg, "rope_parameters", None) or {}
    w.add_rope_freq_base(float(rope.get("full_attention", rope).get("rope_theta", 10000.0)))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    if getattr(cfg, "head_dim", None):
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    if gemma or arch == "phi3":
        w.add_sliding_window(cfg.sliding_window)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)

    def add(name: str, t: torch.Tensor) -> None:
        w.add_tensor(name, np.ascontiguousarray(t.detach().float().numpy()))

    add("token_embd.weight", sd["embed_tokens.weight"])
    if extra is not None:
        extra(w)
    for i in (range(cfg.num_hidden_layers) if layer_order is None else layer_order):
        for hf, gg in names.items():
            key = f"layers.{i}.{hf}"
            if key not in sd:
                continue
            t = sd[key] + 1.0 if gemma and hf.endswith("norm.weight") else sd[key]
            if arch in ("llama", "mistral") and hf == "self_attn.q_proj.weight":
                t = to_interleaved(t, cfg.num_attention_heads)
            elif arch in ("llama", "mistral") and hf == "self_attn.k_proj.weight":
                t = to_interleaved(t, cfg.num_key_value_heads)
            add(f"blk.{i}.{gg}", t)
    add("output_norm.weight", sd["norm.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def llama_cpp_rope_factors(rope: dict, theta: float, head_dim: int) -> np.ndarray:
    """The rope_freqs tensor llama.cpp's convert_hf_to_gguf.py writes for llama3 scaling: one
    factor per frequency, by which llama.cpp divides it (written from that script's loop)."""
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / low, old / high
    out = []
    for freq in 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)):
        wavelen = 2 * np.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


# ---------------------------------------------------------------- expected tensors

HF_LLAMA_TO_CANON = {
    "self_attn.q_proj.weight": "attn.q.weight", "self_attn.k_proj.weight": "attn.k.weight",
    "self_attn.v_proj.weight": "attn.v.weight", "self_attn.o_proj.weight": "attn.o.weight",
    "self_attn.q_proj.bias": "attn.q.bias", "self_attn.k_proj.bias": "attn.k.bias",
    "self_attn.v_proj.bias": "attn.v.bias",
    "mlp.gate_proj.weight": "ffn.gate.weight", "mlp.up_proj.weight": "ffn.up.weight",
    "mlp.down_proj.weight": "ffn.down.weight", "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}


def expected_llama_layer(model: nn.Module, k: int) -> dict[str, torch.Tensor]:
    """Layer k of a transformers Llama/Qwen2 model under frozenlm's canonical names."""
    layer_sd = reference_layers(model)[k].state_dict()
    return {HF_LLAMA_TO_CANON[n]: t for n, t in layer_sd.items() if n in HF_LLAMA_TO_CANON}
