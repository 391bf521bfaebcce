"""Hugging Face model directories: config.json + safetensors (sharded or not) or pytorch_model.bin.

Multimodal checkpoints (LLaVA, Qwen2-VL, Gemma 3) are read for their language model: its config is
`text_config`, its layers the ones outside the vision tower (`language_model.` keys)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from torch import Tensor

from ..config import BlockConfig
from .base import CheckpointError, Reader, check_exists, check_layer_numbers, read_json, safe_torch_load
from .hf_positions import layer_facts, rope_facts

# model_type -> the block variant it is read as (Qwen2-VL's text model is a Qwen2)
LLAMA_LIKE = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen2_vl_text": "qwen2", "smollm3": "smollm3",
              "qwen3": "qwen3", "phi3": "phi3", "gemma2": "gemma2", "gemma3_text": "gemma3"}
MULTIMODAL = ("llava", "qwen2_vl", "gemma3")
SUPPORTED = (*LLAMA_LIKE, "opt", "gpt2", "bert", *MULTIMODAL)
GEMMA = ("gemma2", "gemma3")
# transformers' defaults where config.json may omit the key
DEFAULT_HEAD_DIM = {"qwen3": 128, "gemma2": 256, "gemma3": 256}
REFUSED = {"falcon": "Falcon's parallel attention/MLP block (one shared LayerNorm, fused multi-query qkv, ALiBi "
                     "in some variants) is not one of frozenlm's block layouts",
           "qwen2_moe": "mixture-of-experts MLPs are not supported", "mixtral": "mixture-of-experts MLPs are not supported",
           "qwen3_moe": "mixture-of-experts MLPs are not supported"}

# canonical name -> per-layer suffix in the HF state dict
LLAMA_KEYS = {
    "attn.q.weight": "self_attn.q_proj.weight", "attn.k.weight": "self_attn.k_proj.weight",
    "attn.v.weight": "self_attn.v_proj.weight", "attn.o.weight": "self_attn.o_proj.weight",
    "attn.q.bias": "self_attn.q_proj.bias", "attn.k.bias": "self_attn.k_proj.bias",
    "attn.v.bias": "self_attn.v_proj.bias", "attn.o.bias": "self_attn.o_proj.bias",
    "ffn.gate.weight": "mlp.gate_proj.weight", "ffn.up.weight": "mlp.up_proj.weight",
    "ffn.down.weight": "mlp.down_proj.weight", "ffn.gate.bias": "mlp.gate_proj.bias",
    "ffn.up.bias": "mlp.up_proj.bias", "ffn.down.bias": "mlp.down_proj.bias",
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn.q_norm.weight": "self_attn.q_norm.weight", "attn.k_norm.weight": "self_attn.k_norm.weight",
}
# Gemma 2/3: post_attention_layernorm is the norm AFTER attention; the MLP has its own pre and post norms.
GEMMA_KEYS = {**LLAMA_KEYS, "attn_post_norm.weight": "post_attention_layernorm.weight",
              "ffn_norm.weight": "pre_feedforward_layernorm.weight",
              "ffn_post_norm.weight": "post_feedforward_layernorm.weight"}
# Phi-3 fuses q/k/v and gate/up; split on read (readers.base.split_fused).
PHI3_KEYS = {**{k: v for k, v in LLAMA_KEYS.items() if not k.startswith(("attn.q.", "attn.k.", "attn.v.",
                                                                           "ffn.gate.", "ffn.up."))},
             "attn.qkv.weight": "self_attn.qkv_proj.weight", "ffn.gate_up.weight": "mlp.gate_up_proj.weight"}
OPT_KEYS = {
    **{f"attn.{c}.{p}": f"self_attn.{h}_proj.{p}" for c, h in zip("qkvo", ("q", "k", "v", "out"))
       for p in ("weight", "bias")},
    **{f"attn_norm.{p}": f"self_attn_layer_norm.{p}" for p in ("weight", "bias")},
    **{f"ffn_norm.{p}": f"final_layer_norm.{p}" for p in ("weight", "bias")},
    **{f"ffn.up.{p}": f"fc1.{p}" for p in ("weight", "bias")},
    **{f"ffn.down.{p}": f"fc2.{p}" for p in ("weight", "bias")},
}
BERT_KEYS = {
    **{f"attn.{c}.{p}": f"attention.self.{h}.{p}" for c, h in zip("qkv", ("query", "key", "value"))
       for p in ("weight", "bias")},
    **{f"attn.o.{p}": f"attention.output.dense.{p}" for p in ("weight", "bias")},
    **{f"attn_norm.{p}": f"attention.output.LayerNorm.{p}" for p in ("weight", "bias")},
    **{f"ffn.up.{p}": f"intermediate.dense.{p}" for p in ("weight", "bias")},
    **{f"ffn.down.{p}": f"output.dense.{p}" for p in ("weight", "bias")},
    **{f"ffn_norm.{p}": f"output.LayerNorm.{p}" for p in ("weight", "bias")},
}
# GPT-2 keeps q/k/v fused in one Conv1D (in, out) weight; handled in _read_layer.
GPT2_KEYS = {
    "attn.qkv.weight": "attn.c_attn.weight", "attn.qkv.bias": "attn.c_attn.bias",
    "attn.o.weight": "attn.c_proj.weight", "attn.o.bias": "attn.c_proj.bias",
    "attn_norm.weight": "ln_1.weight", "attn_norm.bias": "ln_1.bias",
    "ffn_norm.weight": "ln_2.weight", "ffn_norm.bias": "ln_2.bias",
    "ffn.up.weight": "mlp.c_fc.weight", "ffn.up.bias": "mlp.c_fc.bias",
    "ffn.down.weight": "mlp.c_proj.weight", "ffn.down.bias": "mlp.c_proj.bias",
}
LAYER_MARK = {"llama": "self_attn.q_proj.weight", "opt": "self_attn.q_proj.weight", "phi3": "self_attn.qkv_proj.weight",
              "gpt2": "attn.c_attn.weight", "bert": "attention.self.query.weight"}
ACTS = {"silu": "silu", "swish": "silu", "relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh",
        "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}


def _act(name: str, path: Path) -> str:
    if name not in ACTS:
        raise CheckpointError(f"{path}: activation {name!r} is not supported (known: {sorted(ACTS)})")
    return ACTS[name]


def text_config(c: dict[str, Any]) -> dict[str, Any]:
    """The language model's config of a multimodal config.json, completed with transformers' defaults
    (a nested text_config holds only the keys that differ from them, e.g. LLaVA-1.5's has no hidden_size)."""
    from transformers import AutoConfig
    return AutoConfig.for_model(**c).get_text_config().to_dict()


def config_from_hf(c: dict[str, Any], path: Path) -> BlockConfig:
    """BlockConfig from a Hugging Face config.json dict."""
    mt = c.get("model_type")
    if mt in REFUSED:
        raise CheckpointError(f"{path}: model_type={mt!r} is not supported: {REFUSED[mt]}")
    if mt not in SUPPORTED:
        raise CheckpointError(f"{path}: unknown architecture model_type={mt!r}; supported: {list(SUPPORTED)}")
    if mt in MULTIMODAL:
        text = text_config(c)
        if text.get("model_type") in MULTIMODAL:
            raise CheckpointError(f"{path}: the text_config of model_type={mt!r} is itself multimodal")
        return config_from_hf(text, path)
    try:
        if mt in LLAMA_LIKE:
            kind = LLAMA_LIKE[mt]
            bias = bool(c.get("attention_bias", False)) or kind == "qwen2"
            rope, layers = rope_facts(c, kind), layer_facts(c, kind, c["num_hidden_layers"])
            gemma = kind in GEMMA
            act = c.get("hidden_activation") or c.get("hidden_act") or ("gelu_pytorch_tanh" if gemma else "silu")
            if c.get("use_bidirectional_attention"):
                layers["unsupported"]["causal"] = "config.json use_bidirectional_attention=true: the source is not causal"
            return BlockConfig(family="llama", arch=mt, dim=c["hidden_size"], n_heads=c["num_attention_heads"],
                               n_kv_heads=c.get("num_key_value_heads"),
                               head_dim=c.get("head_dim") or DEFAULT_HEAD_DIM.get(kind),
                               ffn_dim=c["intermediate_size"], n_layers=c["num_hidden_layers"],
                               norm_eps=c.get("rms_norm_eps", 1e-6), act=_act(act, path),
                               qkv_bias=bias, out_bias=bool(c.get("attention_bias", False)) and kind != "qwen2",
                               mlp_bias=bool(c.get("mlp_bias", False)), rope_theta=rope["rope_theta"],
                               rope_scaling=rope.get("rope_scaling"), rope_key=rope["rope_key"],
                               local_rope=rope.get("local_rope"),
                               qk_norm=kind in ("qwen3", "gemma3"), post_norms=gemma,
                               query_scale=float(c.get("query_pre_attn_scalar", 256)) if gemma else None,
                               # transformers' Gemma 3 attention ignores attn_logit_softcapping
                               attn_softcap=c.get("attn_logit_softcapping", 50.0) if kind == "gemma2" else None,
                               layer_windows=layers["layer_windows"], layer_rope=layers["layer_rope"],
                               unsupported={**rope["unsupported"], **layers["unsupported"]})
        if mt == "opt":
            # OPT-350M (do_layer_norm_before=False) is post-LN; its blocks are still hidden_size wide.
            bias = c.get("enable_bias", True)
            return BlockConfig(family="opt", arch=mt, dim=c["hidden_size"], n_heads=c["num_attention_heads"],
                               ffn_dim=c["ffn_dim"], n_layers=c["num_hidden_layers"], norm_eps=1e-5,
                               act=_act(c.get("activation_function", "relu"), path), qkv_bias=bias,
                               out_bias=bias, mlp_bias=bias, pre_norm=bool(c.get("do_layer_norm_before", True)))
        if mt == "gpt2":
            if c.get("scale_attn_by_inverse_layer_idx") or c.get("reorder_and_upcast_attn"):
                raise CheckpointError(f"{path}: GPT-2 variants with scale_attn_by_inverse_layer_idx or "
                                      f"reorder_and_upcast_attn are not supported")
            d = c["n_embd"]
            return BlockConfig(family="gpt2", arch=mt, dim=d, n_heads=c["n_head"], ffn_dim=c.get("n_inner") or 4 * d,
                               n_layers=c["n_layer"], norm_eps=c.get("layer_norm_epsilon", 1e-5),
                               act=_act(c.get("activation_function", "gelu_new"), path),
                               qkv_bias=True, out_bias=True, mlp_bias=True)
        # bert
        return BlockConfig(family="bert", arch=mt, dim=c["hidden_size"], n_heads=c["num_attention_heads"],
                           ffn_dim=c["intermediate_size"], n_layers=c["num_hidden_layers"],
                           norm_eps=c.get("layer_norm_eps", 1e-12), act=_act(c.get("hidden_act", "gelu"), path),
                           qkv_bias=True, out_bias=True, mlp_bias=True, pre_norm=False)
    except KeyError as e:
        raise CheckpointError(f"{path}: config.json lacks the key {e.args[0]!r} needed for model_type={mt!r}") from None


class _SafetensorsFiles:
    """Lazy access to tensors spread over one or more safetensors files."""

    def __init__(self, weight_map: dict[str, Path]) -> None:
        self.weight_map = weight_map
        self._open: dict[Path, Any] = {}

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def _handle(self, f: Path) -> Any:
        from safetensors import safe_open
        if f not in self._open:
            check_exists(f, "safetensors shard")
            try:
                self._open[f] = safe_open(str(f), framework="pt")
            except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
                raise CheckpointError(f"{f} is not a valid safetensors file ({e}); truncated or corrupt? "
                                      f"Re-download or re-save it.") from None
        return self._open[f]

    def get(self, key: str) -> Tensor:
        f = self.weight_map[key]
        try:
            return self._handle(f).get_tensor(key)
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{f}: cannot read tensor {key!r} ({e}); the file is truncated or corrupt") from None

    def info(self, key: str) -> tuple[tuple[int, ...], str]:
        sl = self._handle(self.weight_map[key]).get_slice(key)
        return tuple(sl.get_shape()), str(sl.get_dtype())


class _TorchFiles:
    """Lazy access to tensors in one or more (memory-mapped, weights-only) pytorch_model*.bin files."""

    def __init__(self, weight_map: dict[str, Path]) -> None:
        self.weight_map = weight_map
        self._loaded: dict[Path, dict[str, Tensor]] = {}

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def _sd(self, f: Path) -> dict[str, Tensor]:
        if f not in self._loaded:
            check_exists(f, "weights file")
            self._loaded[f] = safe_torch_load(f)
        return self._loaded[f]

    def get(self, key: str) -> Tensor:
        return self._sd(self.weight_map[key])[key]

    def info(self, key: str) -> tuple[tuple[int, ...], str]:
        t = self.get(key)
        return tuple(t.shape), str(t.dtype).replace("torch.", "")


def _index(path: Path) -> Any:
    """Find the weight files of an HF directory and map every tensor name to its file."""
    st, st_idx = path / "model.safetensors", path / "model.safetensors.index.json"
    pt, pt_idx = path / "pytorch_model.bin", path / "pytorch_model.bin.index.json"
    if st_idx.exists() or pt_idx.exists():
        idx = st_idx if st_idx.exists() else pt_idx
        try:
            wm = json.loads(idx.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{idx}: not a valid shard index ({e})") from None
        files = {k: path / v for k, v in wm.items()}
        return _SafetensorsFiles(files) if idx is st_idx else _TorchFiles(files)
    if st.exists():
        reader = _SafetensorsFiles({})
        keys = reader._handle(st).keys()
        reader.weight_map = {k: st for k in keys}
        return reader
    if pt.exists():
        sd = safe_torch_load(pt)
        reader = _TorchFiles({k: pt for k in sd})
        reader._loaded[pt] = sd
        return reader
    raise CheckpointError(f"{path}: no weights found; expected model.safetensors, model.safetensors.index.json "
                          f"or pytorch_model.bin next to config.json")


class HFReader(Reader):
    """Reader for a Hugging Face model directory (the model types in SUPPORTED)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        cfg_file = self.path / "config.json"
        raw = read_json(cfg_file, "config.json of a Hugging Face model directory")
        self.config = config_from_hf(raw, cfg_file)
        self.multimodal = raw.get("model_type") in MULTIMODAL
        self.files = _index(self.path)
        self.format = "hf-safetensors" if isinstance(self.files, _SafetensorsFiles) else "hf-pytorch-bin"
        c = self.config
        self.gemma = c.family == "llama" and LLAMA_LIKE[c.arch] in GEMMA
        variant = "phi3" if c.arch == "phi3" else c.family
        self.keymap = {"llama": GEMMA_KEYS if self.gemma else LLAMA_KEYS, "phi3": PHI3_KEYS, "opt": OPT_KEYS,
                       "gpt2": GPT2_KEYS, "bert": BERT_KEYS}[variant]
        self.prefix = self._find_prefix(LAYER_MARK[variant])

    def _find_prefix(self, mark: str) -> str:
        """The text before the layer number (e.g. 'model.layers.'), from every layer's marker key.

        The prefix must end at a '.' (or be empty) and the number after it must be a whole
        component, so 'layers.10.' can never be read as prefix 'layers.1' + layer 0, whatever
        order the index or the file lists its keys in. Every key is looked at: one prefix and the
        layers 0..n_layers-1 of config.json, or an error, never a guess.
        """
        pat = re.compile(r"^((?:.*\.)?)(\d+)\." + re.escape(mark) + "$")
        found: dict[str, set[int]] = {}
        for k in self.files.keys():
            m = pat.match(k)
            if m and not (self.multimodal and re.search(r"(^|\.)(vision\w*|visual)\.", m.group(1))):
                found.setdefault(m.group(1), set()).add(int(m.group(2)))
        if not found:
            raise CheckpointError(f"{self.path}: no tensor named like '<prefix>N.{mark}' found; the weights do not "
                                  f"match config.json's model_type={self.config.arch!r}")
        if len(found) > 1:
            raise CheckpointError(f"{self.path}: layer tensors '*.N.{mark}' appear under several prefixes "
                                  f"{sorted(found)}; frozenlm cannot tell which stack is the language model")
        (prefix, layers), = found.items()
        key = "n_layer" if self.config.family == "gpt2" else "num_hidden_layers"
        check_layer_numbers(self.path, layers, self.config.n_layers, f"{prefix}N.{mark}", f"config.json {key}")
        return prefix

    def layer_keys(self, i: int) -> dict[str, str]:
        avail = set(self.files.keys())
        out = {}
        for canon, suffix in self.keymap.items():
            key = f"{self.prefix}{i}.{suffix}"
            if key not in avail and suffix.endswith(("LayerNorm.weight", "LayerNorm.bias")):
                key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
            if key in avail:
                out[canon] = key
        return out

    def tensor_info(self, i: int) -> list[tuple[str, tuple[int, ...], str]]:
        return [(k, *self.files.info(k)) for k in self.layer_keys(i).values()]

    def key_pattern(self, i: int, canon: str) -> str | None:
        if canon not in self.keymap and self.config.family == "gpt2" and canon.startswith("attn."):
            canon = "attn.qkv." + canon.split(".")[-1]
        return f"{self.prefix}{i}.{self.keymap[canon]}" if canon in self.keymap else None

    def _read_layer(self, i: int) -> dict[str, Tensor]:
        out = self._to_canonical({canon: self.files.get(key) for canon, key in self.layer_keys(i).items()})
        return {k: v.contiguous() for k, v in out.items()}

    def _to_canonical(self, out: dict[str, Tensor]) -> dict[str, Tensor]:
        """File tensors -> canonical layout: GPT-2's Conv1D (in, out) transposed, fused tensors split,
        Gemma's norm weights w stored as the 1 + w they multiply by (as llama.cpp's GGUF files store them)."""
        if self.config.family == "gpt2":
            for name in ("attn.qkv.weight", "attn.o.weight", "ffn.up.weight", "ffn.down.weight"):
                if name in out:
                    out[name] = out[name].t()
        if self.gemma:
            out.update({k: 1.0 + v.float() for k, v in out.items() if k.endswith("norm.weight")})
        return super()._to_canonical(out)
