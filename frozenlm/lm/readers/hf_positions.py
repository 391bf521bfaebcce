"""RoPE scaling and per-layer attention facts of a Hugging Face config.json, read the way
transformers 5 reads them (its config classes' defaults and derivations), for BlockConfig.

Covers `rope_parameters` (transformers 5) and `rope_scaling` (older files; `type` or `rope_type`),
Mistral's `sliding_window`, Qwen2's `use_sliding_window` + `max_window_layers` / `layer_types`,
and SmolLM3's `no_rope_layers` / `layer_types`. Whatever cannot be represented is recorded in
`unsupported`, so the matching mode is refused with the key named (never silently approximated).
"""
from __future__ import annotations

from typing import Any

# transformers' config defaults where a key is absent from config.json
DEFAULT_THETA = {"smollm3": 2_000_000.0}
DEFAULT_MAX_POSITIONS = {"llama": 2048, "mistral": 4096 * 32, "qwen2": 32768, "smollm3": 32768}
LAYER_TYPES = ("full_attention", "sliding_attention")


def rope_facts(c: dict[str, Any], arch: str) -> dict[str, Any]:
    """BlockConfig fields rope_theta, rope_scaling, rope_key (+ unsupported['rope'] if any)."""
    key = "rope_scaling" if c.get("rope_scaling") else "rope_parameters"
    rp = dict(c.get(key) or {})  # transformers: a non-empty rope_scaling wins over rope_parameters
    where = f"config.json {key}"
    out: dict[str, Any] = {"rope_key": where, "unsupported": {}}
    if rp and all(isinstance(v, dict) for v in rp.values()):
        out["rope_theta"] = float(c.get("rope_theta", DEFAULT_THETA.get(arch, 10000.0)))
        out["unsupported"]["rope"] = (f"{where} gives one RoPE per layer type ({sorted(rp)}); frozenlm "
                                      f"reproduces a single RoPE for all layers")
        return out
    out["rope_theta"] = float(rp.get("rope_theta", c.get("rope_theta", DEFAULT_THETA.get(arch, 10000.0))))
    partial = rp.get("partial_rotary_factor", c.get("partial_rotary_factor"))
    if partial is not None and float(partial) != 1.0:
        out["unsupported"]["rope"] = (f"config.json partial_rotary_factor={partial}: RoPE on part of each head "
                                      f"is not implemented")
    kind = rp.get("rope_type", rp.get("type", "default"))
    if kind == "default":
        out["rope_scaling"] = None
        return out
    sc = {k: v for k, v in rp.items() if k not in ("type", "rope_theta", "partial_rotary_factor")}
    sc["rope_type"] = kind
    sc["max_position_embeddings"] = c.get("max_position_embeddings", DEFAULT_MAX_POSITIONS.get(arch))
    if kind in ("llama3", "yarn", "longrope"):
        # transformers: a top-level original_max_position_embeddings (Phi-3 style) takes priority
        if c.get("original_max_position_embeddings") is not None:
            sc["original_max_position_embeddings"] = c["original_max_position_embeddings"]
        else:
            sc.setdefault("original_max_position_embeddings", sc["max_position_embeddings"])
    out["rope_scaling"] = sc
    return out


def layer_facts(c: dict[str, Any], arch: str, n_layers: int) -> dict[str, Any]:
    """BlockConfig fields layer_windows, layer_rope (+ unsupported['causal'/'rope'] if any)."""
    out: dict[str, Any] = {"layer_windows": None, "layer_rope": None, "unsupported": {}}
    if arch == "mistral":
        # MistralConfig defaults to 4096 when the key is absent; MistralModel ignores layer_types.
        w = c.get("sliding_window", 4096)
        out["layer_windows"] = [w] * n_layers if w is not None else None
        return out
    if arch == "qwen2":
        window = c.get("sliding_window", 4096) if c.get("use_sliding_window", False) else None
        types = c.get("layer_types")
        if types is None:
            start = c.get("max_window_layers", 28)
            types = ["sliding_attention" if window is not None and i >= start else "full_attention"
                     for i in range(n_layers)]
        _windows(out, types, window, n_layers)
        return out
    if arch == "smollm3":
        rope = c.get("no_rope_layers")
        if rope is None:
            interval = c.get("no_rope_layer_interval", 4)
            rope = [int((i + 1) % interval != 0) for i in range(n_layers)]
        if len(rope) != n_layers:
            out["unsupported"]["rope"] = (f"config.json no_rope_layers has {len(rope)} entries for "
                                          f"{n_layers} layers")
        else:
            out["layer_rope"] = [bool(v) for v in rope]
        window = c.get("sliding_window")  # SmolLM3 keeps it even with use_sliding_window false
        types = c.get("layer_types")
        if types is None:
            use = c.get("use_sliding_window", False) and window is not None
            types = ["sliding_attention" if use and not (out["layer_rope"] or [True] * n_layers)[i]
                     else "full_attention" for i in range(n_layers)]
        _windows(out, types, window, n_layers)
    return out


def _windows(out: dict[str, Any], types: list[str], window: int | None, n_layers: int) -> None:
    """layer_types + the window size -> per-layer windows, or the reason they cannot be used."""
    if len(types) != n_layers:
        out["unsupported"]["causal"] = f"config.json layer_types has {len(types)} entries for {n_layers} layers"
        return
    odd = sorted({t for t in types if t not in LAYER_TYPES})
    if odd:
        out["unsupported"]["causal"] = (f"config.json layer_types holds {odd}; frozenlm reproduces only "
                                        f"{list(LAYER_TYPES)}")
        return
    sliding = [i for i, t in enumerate(types) if t == "sliding_attention"]
    if sliding and window is None:
        out["unsupported"]["causal"] = (f"config.json layer_types marks layers {sliding} as sliding_attention, "
                                        f"but sliding_window is not set (or use_sliding_window is false)")
        return
    if sliding:
        out["layer_windows"] = [window if t == "sliding_attention" else None for t in types]
