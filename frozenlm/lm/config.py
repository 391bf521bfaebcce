"""Architecture description shared by every block family and every checkpoint reader."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

FAMILIES = ("llama", "opt", "gpt2", "bert")


@dataclass
class BlockConfig:
    """Shape and flavour of one transformer block of a language model.

    `family` picks the block layout:
      llama: pre-RMSNorm, gated MLP (SwiGLU; GeGLU for Gemma), grouped-query attention (LLaMA 1/2/3,
             Mistral, Qwen2/3, SmolLM2/3, Phi-3, Gemma 2/3); the flags below add QK-norm, post-sublayer
             norms, another attention scale and logit soft-capping
      opt:   pre-LayerNorm (or post-LN when `pre_norm` is False), ReLU MLP, biases
      gpt2:  pre-LayerNorm, GELU(tanh) MLP, biases (Conv1D weights already transposed by the reader)
      bert:  post-LayerNorm, GELU MLP, biases
    """

    family: str
    dim: int
    n_heads: int
    ffn_dim: int
    n_layers: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    norm_eps: float = 1e-5
    act: str = "silu"
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    pre_norm: bool = True
    rope_theta: float = 10000.0
    arch: str = ""  # the source's own name (e.g. "qwen2", "mistral"), informational
    qk_norm: bool = False  # RMSNorm over each head's q and k before RoPE (Qwen3, Gemma 3)
    post_norms: bool = False  # a norm after attention and after the MLP, before each residual add (Gemma 2/3)
    query_scale: float | None = None  # scores scaled by query_scale**-0.5 (Gemma's query_pre_attn_scalar); None = head_dim
    attn_softcap: float | None = None  # scores -> softcap * tanh(scores / softcap) before the mask (Gemma 2)
    extra: dict[str, Any] = field(default_factory=dict)
    # What the source LM does with positions, so rope="1d" / mask="causal" reproduce it (lm/rope.py):
    rope_scaling: dict[str, Any] | None = None  # rope_type + parameters, transformers' names; None = plain
    rope_key: str = ""  # the source key rope_scaling came from (named in refusals)
    layer_windows: list[int | None] | None = None  # per source layer: causal sliding window, None = full
    layer_rope: list[bool] | None = None  # per source layer: False = the layer applies no RoPE (NoPE)
    # RoPE of the sliding-window layers where it differs (Gemma 3's local layers): rope_theta, rope_scaling
    local_rope: dict[str, Any] | None = None
    unsupported: dict[str, str] = field(default_factory=dict)  # "rope"/"causal" -> why it cannot be reproduced

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown block family {self.family!r}; expected one of {FAMILIES}")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        for name in ("layer_windows", "layer_rope"):
            v = getattr(self, name)
            if v is not None and len(v) != self.n_layers:
                raise ValueError(f"{name} has {len(v)} entries for {self.n_layers} layers")

    def layer_window(self, i: int) -> int | None:
        """Sliding-window size of source layer i under its causal mask (None: full causal)."""
        return self.layer_windows[i] if self.layer_windows else None

    def layer_rope_config(self, i: int) -> "BlockConfig":
        """The config whose rope_theta / rope_scaling source layer i rotates with (see `local_rope`)."""
        if self.local_rope is None or self.layer_window(i) is None:
            return self
        return replace(self, local_rope=None, rope_key=f"{self.rope_key} (sliding layers)", **self.local_rope)

    def layer_has_rope(self, i: int) -> bool:
        """Whether source layer i rotates q/k at all (SmolLM3's NoPE layers do not)."""
        return self.layer_rope[i] if self.layer_rope else True

    @property
    def norm(self) -> str:
        """'rms' for the LLaMA family, 'layer' otherwise."""
        return "rms" if self.family == "llama" else "layer"

    @property
    def gated(self) -> bool:
        """True for SwiGLU (gate/up/down) MLPs."""
        return self.family == "llama"

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BlockConfig":
        """Inverse of `to_dict`."""
        return cls(**d)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical tensor names of one block and their shapes (weights are (out, in))."""
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        s: dict[str, tuple[int, ...]] = {
            "attn.q.weight": (q, self.dim),
            "attn.k.weight": (kv, self.dim),
            "attn.v.weight": (kv, self.dim),
            "attn.o.weight": (self.dim, q),
            "attn_norm.weight": (self.dim,),
            "ffn_norm.weight": (self.dim,),
            "ffn.up.weight": (self.ffn_dim, self.dim),
            "ffn.down.weight": (self.dim, self.ffn_dim),
        }
        if self.gated:
            s["ffn.gate.weight"] = (self.ffn_dim, self.dim)
        if self.qk_norm:
            s.update({"attn.q_norm.weight": (self.head_dim,), "attn.k_norm.weight": (self.head_dim,)})
        if self.post_norms:
            s.update({"attn_post_norm.weight": (self.dim,), "ffn_post_norm.weight": (self.dim,)})
        if self.qkv_bias:
            s.update({"attn.q.bias": (q,), "attn.k.bias": (kv,), "attn.v.bias": (kv,)})
        if self.out_bias:
            s["attn.o.bias"] = (self.dim,)
        if self.mlp_bias:
            s.update({"ffn.up.bias": (self.ffn_dim,), "ffn.down.bias": (self.dim,)})
            if self.gated:
                s["ffn.gate.bias"] = (self.ffn_dim,)
        if self.norm == "layer":
            s.update({"attn_norm.bias": (self.dim,), "ffn_norm.bias": (self.dim,)})
        return s

    def params_per_block(self) -> int:
        """Number of parameters in one block."""
        n = 0
        for shape in self.expected_shapes().values():
            p = 1
            for d in shape:
                p *= d
            n += p
        return n
