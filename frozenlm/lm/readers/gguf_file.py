"""GGUF files (llama.cpp): dequantise only the requested layer's tensors."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import BlockConfig
from .base import CheckpointError, Reader, check_exists, check_layer_numbers, unpermute_rotary

KEYS = {
    "attn.q.weight": "attn_q.weight", "attn.k.weight": "attn_k.weight", "attn.v.weight": "attn_v.weight",
    "attn.o.weight": "attn_output.weight", "attn.q.bias": "attn_q.bias", "attn.k.bias": "attn_k.bias",
    "attn.v.bias": "attn_v.bias", "ffn.gate.weight": "ffn_gate.weight", "ffn.up.weight": "ffn_up.weight",
    "ffn.down.weight": "ffn_down.weight", "attn_norm.weight": "attn_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight", "attn.q_norm.weight": "attn_q_norm.weight",
    "attn.k_norm.weight": "attn_k_norm.weight", "attn_post_norm.weight": "post_attention_norm.weight",
    "ffn_post_norm.weight": "post_ffw_norm.weight", "attn.qkv.weight": "attn_qkv.weight",
}
# Phi-3: llama.cpp keeps the fused gate_up projection under the name ffn_up (split on read)
PHI3_KEYS = {**{k: v for k, v in KEYS.items() if k != "ffn.up.weight"}, "ffn.gate_up.weight": "ffn_up.weight"}
_LAYER_KEY = re.compile(r"^blk\.(\d+)\.attn_q(?:kv)?\.weight$")
# llama.cpp permutes q/k rows for these architectures only (their RoPE is the interleaved kind).
PERMUTED_ARCHS = ("llama", "mistral")
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3")
# architectures whose sliding window (when set) applies to every layer, as in transformers' Mistral
ALL_LAYERS_WINDOW = ("mistral",)
# llama.cpp's Gemma facts that its files do not store: every n-th layer is global, the 27B models
# (46 / 62 layers) scale scores by dim/heads instead of head_dim, Gemma 3's local layers use theta 1e4.
SLIDING_PATTERN = {"gemma2": 2, "gemma3": 6}
GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}


def _plain_array_reader(path: Path) -> Any:
    """gguf.GGUFReader over a plain ndarray view of its memory map (same bytes, still lazy).

    The header parse indexes the map once per vocabulary string; np.memmap's per-index overhead
    made that ~3x slower (25 s vs 9 s for Gemma 3's 262k-token vocabulary)."""
    import gguf

    class _Reader(gguf.GGUFReader):
        @property
        def data(self) -> np.ndarray:
            return self._data

        @data.setter
        def data(self, v: np.ndarray) -> None:
            self._data = v.view(np.ndarray) if isinstance(v, np.memmap) else v

    return _Reader(str(path))


class GGUFReader(Reader):
    """Reader for llama-family GGUF files (SUPPORTED), any quantisation gguf can dequantise.

    llama.cpp's converter stores Gemma's norm weights as the 1 + w they multiply by: read as they are.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        check_exists(self.path, "GGUF file")
        try:
            self.reader = _plain_array_reader(self.path)
        except Exception as e:  # noqa: BLE001 - gguf raises assorted errors for bad files
            raise CheckpointError(f"{self.path} is not a readable GGUF file ({type(e).__name__}: {e}); "
                                  f"truncated or corrupt? Re-download or re-convert it.") from None
        self.tensors = {t.name: t for t in self.reader.tensors}
        arch = self._field("general.architecture")
        if arch not in SUPPORTED:
            raise CheckpointError(f"{self.path}: GGUF architecture {arch!r} is not supported (supported: {SUPPORTED})")
        self.arch = arch
        self.keys = PHI3_KEYS if arch == "phi3" else KEYS
        q = self._field
        dim, heads = int(q(f"{arch}.embedding_length")), int(q(f"{arch}.attention.head_count"))
        kv = int(q(f"{arch}.attention.head_count_kv", heads))
        hd, n_layers = int(q(f"{arch}.attention.key_length", dim // heads)), int(q(f"{arch}.block_count"))
        gemma = arch in SLIDING_PATTERN
        self.config = BlockConfig(
            family="llama", arch=arch, dim=dim, n_heads=heads, n_kv_heads=kv, head_dim=hd,
            ffn_dim=int(q(f"{arch}.feed_forward_length")), n_layers=n_layers,
            norm_eps=float(q(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(q(f"{arch}.rope.freq_base", 10000.0)), act="gelu_tanh" if gemma else "silu",
            qkv_bias="blk.0.attn_q.bias" in self.tensors, qk_norm="blk.0.attn_q_norm.weight" in self.tensors,
            post_norms="blk.0.post_attention_norm.weight" in self.tensors,
            query_scale=float(dim // heads if GEMMA_27B_LAYERS.get(arch) == n_layers else hd) if gemma else None,
            attn_softcap=float(q(f"{arch}.attn_logit_softcapping", 50.0)) if arch == "gemma2" else None,
            **self._positions(arch, hd, n_layers))
        self.format = f"gguf ({self._file_type()})"
        found = {int(m.group(1)) for n in self.tensors if (m := _LAYER_KEY.match(n))}
        check_layer_numbers(self.path, found, self.config.n_layers, "blk.N.attn_q.weight",
                            f"GGUF metadata {arch}.block_count")

    _MISSING = object()

    def _positions(self, arch: str, hd: int, n_layers: int) -> dict[str, Any]:
        """RoPE scaling and sliding windows from llama.cpp's metadata keys and rope_freqs tensor."""
        q = self._field
        out: dict[str, Any] = {"rope_scaling": None, "unsupported": {}}
        kind = str(q(f"{arch}.rope.scaling.type", "none"))
        factor = q(f"{arch}.rope.scaling.factor", None)
        if kind == "linear":
            out["rope_scaling"] = {"rope_type": "linear", "factor": None if factor is None else float(factor)}
            out["rope_key"] = f"GGUF metadata {arch}.rope.scaling.type"
        elif kind != "none":
            out["unsupported"]["rope"] = (f"GGUF metadata {arch}.rope.scaling.type={kind!r} is not reproduced "
                                          f"(only 'none', 'linear' and a rope_freqs tensor are)")
        if float(q(f"{arch}.rope.scaling.attn_factor", 1.0)) != 1.0:
            out["unsupported"]["rope"] = f"GGUF metadata {arch}.rope.scaling.attn_factor is not reproduced"
        dims = int(q(f"{arch}.rope.dimension_count", hd))
        if dims != hd:
            out["unsupported"]["rope"] = (f"GGUF metadata {arch}.rope.dimension_count={dims} < head_dim {hd}: "
                                          f"RoPE on part of each head is not implemented")
        if "rope_freqs.weight" in self.tensors:
            # llama.cpp's form of llama3 scaling: each frequency divided by its factor
            from gguf.quants import dequantize
            t = self.tensors["rope_freqs.weight"]
            ff = [float(v) for v in np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(-1)]
            linear = (out["rope_scaling"] or {}).get("factor")
            out["rope_scaling"] = {"rope_type": "freq_factors", "freq_factors": ff, "factor": linear or 1.0}
            out["rope_key"] = "GGUF tensor rope_freqs.weight"
        if any(n in self.tensors for n in ("rope_factors_long.weight", "rope_factors_short.weight")):
            out["unsupported"]["rope"] = "GGUF tensors rope_factors_long/short (LongRoPE) are not reproduced"
        window = q(f"{arch}.attention.sliding_window", None)
        if window is not None and arch in ALL_LAYERS_WINDOW:
            out["layer_windows"] = [int(window)] * n_layers
        elif window is not None and arch in SLIDING_PATTERN:
            pattern = int(q(f"{arch}.attention.sliding_window_pattern", SLIDING_PATTERN[arch]))
            out["layer_windows"] = [int(window) if (i + 1) % pattern else None for i in range(n_layers)]
            if arch == "gemma3":  # the local layers' own RoPE: plain, base 1e4 unless the file says otherwise
                out["local_rope"] = {"rope_theta": float(q(f"{arch}.rope.freq_base_swa", 10000.0)), "rope_scaling": None}
        elif window is not None:
            out["unsupported"]["causal"] = (f"GGUF metadata {arch}.attention.sliding_window={window} is set, but the "
                                            f"file does not record which layers use the window")
        return out

    def _field(self, key: str, default: Any = _MISSING) -> Any:
        f = self.reader.fields.get(key)
        if f is None:
            if default is self._MISSING:
                raise CheckpointError(f"{self.path}: GGUF metadata key {key!r} is missing")
            return default
        return f.contents()

    def _file_type(self) -> str:
        kinds = sorted({t.tensor_type.name for n, t in self.tensors.items() if n.startswith("blk.")})
        return "/".join(kinds)

    def layer_keys(self, i: int) -> dict[str, str]:
        return {c: f"blk.{i}.{s}" for c, s in self.keys.items() if f"blk.{i}.{s}" in self.tensors}

    def key_pattern(self, i: int, canon: str) -> str | None:
        return f"blk.{i}.{self.keys[canon]}" if canon in self.keys else None

    def tensor_info(self, i: int) -> list[tuple[str, tuple[int, ...], str]]:
        out = []
        for name in self.layer_keys(i).values():
            t = self.tensors[name]
            out.append((name, tuple(int(d) for d in reversed(t.shape)), t.tensor_type.name))
        return out

    def _read_layer(self, i: int) -> dict[str, Tensor]:
        from gguf.quants import dequantize
        out = {}
        for canon, name in self.layer_keys(i).items():
            t = self.tensors[name]
            shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dims innermost first
            try:
                arr = dequantize(t.data, t.tensor_type)
            except Exception as e:  # noqa: BLE001
                raise CheckpointError(f"{self.path}: cannot dequantise {name} ({t.tensor_type.name}): {e}") from None
            w = torch.from_numpy(np.array(arr, dtype=np.float32)).reshape(shape)  # copy: memmap is read-only
            if self.arch in PERMUTED_ARCHS and canon in ("attn.q.weight", "attn.k.weight"):
                n = self.config.n_heads if canon == "attn.q.weight" else self.config.n_kv_heads
                w = unpermute_rotary(w, n)
            out[canon] = w
        return self._to_canonical(out)
