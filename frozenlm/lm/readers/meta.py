"""Meta LLaMA directories: params.json + consolidated.NN.pth (model-parallel shards)."""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from ..config import BlockConfig
from .base import CheckpointError, Reader, check_layer_numbers, read_json, safe_torch_load, unpermute_rotary

KEYS = {
    "attn.q.weight": "attention.wq.weight", "attn.k.weight": "attention.wk.weight",
    "attn.v.weight": "attention.wv.weight", "attn.o.weight": "attention.wo.weight",
    "ffn.gate.weight": "feed_forward.w1.weight", "ffn.down.weight": "feed_forward.w2.weight",
    "ffn.up.weight": "feed_forward.w3.weight", "attn_norm.weight": "attention_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
}
# Model-parallel shards split column-parallel weights on dim 0, row-parallel ones on dim 1.
ROW_PARALLEL = ("attn.o.weight", "ffn.down.weight")


_LAYER_KEY = re.compile(r"^layers\.(\d+)\.attention\.wq\.weight$")
_SHARD = re.compile(r"^consolidated\.(\d+)\.pth$")


def _ordered_shards(path: Path) -> list[Path]:
    """consolidated.NN.pth files in model-parallel rank order (by number, not by name), all present."""
    ranks = {int(m.group(1)): f for f in path.glob("consolidated.*.pth") if (m := _SHARD.match(f.name))}
    if not ranks:
        raise CheckpointError(f"{path}: no consolidated.NN.pth files next to params.json")
    if sorted(ranks) != list(range(len(ranks))):
        raise CheckpointError(f"{path}: model-parallel shards are numbered {sorted(ranks)}; expected "
                              f"consolidated.00.pth .. consolidated.{len(ranks) - 1:02d}.pth with none missing")
    return [ranks[r] for r in range(len(ranks))]


def meta_rope(p: dict) -> dict:
    """RoPE scaling from params.json, as BlockConfig fields.

    `use_scaled_rope` is the llama3 scaling of Meta's reference model.py (low/high frequency factors
    1 and 4, original context 8192), but params.json does not say its factor: Meta's code uses 8
    (Llama 3.1) while transformers' converter uses 32 for Llama 3.2, whose params.json reads the
    same. So the factor must be stated (`rope_scaling_factor`, as Llama 4's params do), or rope='1d'
    is refused. A `rope_scaling` dict uses transformers' names (`rope_type` or `type`, `factor`, ...).
    """
    if p.get("rope_scaling"):
        sc = dict(p["rope_scaling"])
        sc["rope_type"] = sc.pop("rope_type", sc.pop("type", "default"))
        return {"rope_scaling": None if sc["rope_type"] == "default" else sc, "rope_key": "params.json rope_scaling"}
    if not p.get("use_scaled_rope"):
        return {}
    if p.get("rope_scaling_factor") is None:
        return {"rope_key": "params.json use_scaled_rope", "unsupported": {"rope": (
            "params.json has use_scaled_rope=true but no rope_scaling_factor; Meta's reference code uses 8 "
            "(Llama 3.1), transformers' converter 32 for Llama 3.2: add \"rope_scaling_factor\": 8 or 32 "
            "to params.json")}}
    sc = {"rope_type": "llama3", "factor": float(p["rope_scaling_factor"]), "low_freq_factor": 1.0,
          "high_freq_factor": float(p.get("rope_high_freq_factor") or 4.0),
          "original_max_position_embeddings": 8192}
    return {"rope_scaling": sc, "rope_key": "params.json use_scaled_rope"}


def llama_ffn_dim(dim: int, multiple_of: int, multiplier: float | None) -> int:
    """The SwiGLU hidden size Meta's model.py derives from params.json."""
    hidden = int(2 * (4 * dim) / 3)
    if multiplier is not None:
        hidden = int(multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class MetaReader(Reader):
    """Reader for Meta's consolidated checkpoints; each shard is memory-mapped, never read whole."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        pj = self.path / "params.json"
        p = read_json(pj, "params.json of a Meta LLaMA directory")
        self.shards = _ordered_shards(self.path)
        self._sds: list[dict[str, Tensor]] | None = None
        try:
            dim, heads = int(p["dim"]), int(p["n_heads"])
            n_layers = int(p["n_layers"])
        except KeyError as e:
            raise CheckpointError(f"{pj} lacks the key {e.args[0]!r}") from None
        ffn = llama_ffn_dim(dim, int(p.get("multiple_of", 256)), p.get("ffn_dim_multiplier"))
        self.config = BlockConfig(family="llama", arch="llama", dim=dim, n_heads=heads,
                                  n_kv_heads=p.get("n_kv_heads") or heads, ffn_dim=ffn, n_layers=n_layers,
                                  norm_eps=float(p.get("norm_eps", 1e-6)),
                                  rope_theta=float(p.get("rope_theta", 10000.0)), **meta_rope(p))
        self.format = f"meta-consolidated ({len(self.shards)} shard{'s' if len(self.shards) > 1 else ''})"

    @property
    def sds(self) -> list[dict[str, Tensor]]:
        """Memory-mapped state dicts of every shard (tensors are views into the files)."""
        if self._sds is None:
            sds = [safe_torch_load(f) for f in self.shards]
            found = {int(m.group(1)) for k in sds[0] if (m := _LAYER_KEY.match(k))}
            check_layer_numbers(self.shards[0], found, self.config.n_layers, "layers.N.attention.wq.weight",
                                "params.json n_layers")
            self._sds = sds
        return self._sds

    def layer_keys(self, i: int) -> dict[str, str]:
        return {c: f"layers.{i}.{s}" for c, s in KEYS.items() if f"layers.{i}.{s}" in self.sds[0]}

    def key_pattern(self, i: int, canon: str) -> str | None:
        return f"layers.{i}.{KEYS[canon]}" if canon in KEYS else None

    def tensor_info(self, i: int) -> list[tuple[str, tuple[int, ...], str]]:
        out = []
        for canon, key in self.layer_keys(i).items():
            parts = [sd[key] for sd in self.sds]
            shape = self._merged_shape(canon, parts)
            out.append((key, shape, str(parts[0].dtype).replace("torch.", "")))
        return out

    @staticmethod
    def _merged_shape(canon: str, parts: list[Tensor]) -> tuple[int, ...]:
        s = list(parts[0].shape)
        if len(parts) > 1 and len(s) == 2:
            s[1 if canon in ROW_PARALLEL else 0] *= len(parts)
        return tuple(s)

    def _read_layer(self, i: int) -> dict[str, Tensor]:
        out = {}
        for canon, key in self.layer_keys(i).items():
            try:
                parts = [sd[key] for sd in self.sds]
            except KeyError:
                raise CheckpointError(f"{self.path}: shard lacks {key!r}; the shards do not belong together") from None
            if parts[0].ndim == 1 or len(parts) == 1:
                # Norms are replicated across shards. No copy: the mapping is private (copy-on-write),
                # and a copy here would hold the layer twice while it is converted to its dtype.
                w = parts[0]
            else:
                w = torch.cat(parts, dim=1 if canon in ROW_PARALLEL else 0)
            if canon in ("attn.q.weight", "attn.k.weight"):
                n = self.config.n_heads if canon == "attn.q.weight" else self.config.n_kv_heads
                if w.shape[0] % (2 * n) == 0:  # else the shape check in read_layer reports it
                    w = unpermute_rotary(w, n)
            out[canon] = w.contiguous()
        return out
