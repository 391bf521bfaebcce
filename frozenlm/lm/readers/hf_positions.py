"""RoPE scaling and per-layer attention facts of a Hugging Face config.json, read the way
transformers 5 reads them (its config classes' defaults and derivations), for BlockConfig.

Covers `rope_parameters` (transformers 5) and `rope_scaling` (older files; `type` or `rope_type`),
Gemma 3's RoPE per layer type (or `rope_local_base_freq`), Mistral's and Phi-3's `sliding_window`,
Qwen2/Qwen3's `use_sliding_window` + `max_window_layers` / `layer_types`, Gemma 2/3's
`layer_types` / sliding-window pattern, and SmolLM3's `no_rope_layers` / `layer_types`. Whatever cannot be represented is recorded in
`unsupported`, so the matching mode is refused with the key named (never silently approximated).
"""
from __future__ import annotations

from typing import Any

# transformers' config defaults where a key is absent from config.json
DEFAULT_THETA = {"smollm3": 2_000_000.0, "gemma3": 1_000_000.0}
DEFAULT_MAX_POSITIONS = {"llama": 2048, "mistral": 4096 * 32, "qwen2": 32768, "smollm3": 32768, "qwen3": 32768,
                         "phi3": 4096, "gemma2": 8192, "gemma3": 131072}
# every n-th layer is global, the others slide (transformers' and llama.cpp's defaults)
SLIDING_PATTERN = {"gemma2": 2, "gemma3": 6}
LAYER_TYPES = ("full_attention", "sliding_attention")


def rope_facts(c: dict[str, Any], arch: str) -> dict[str, Any]:
    """BlockConfig fields rope_theta, rope_scaling, rope_key, local_rope (+ unsupported['rope'] if any)."""
    key = "rope_scaling" if c.get("rope_scaling") else "rope_parameters"
    rp = dict(c.get(key) or {})  # transformers: a non-empty rope_scaling wins over rope_parameters
    where = f"config.json {key}"
    theta = float(c.get("rope_theta", DEFAULT_THETA.get(arch, 10000.0)))
    if arch == "gemma3" and not all(isinstance(v, dict) for v in rp.values()):
        # older Gemma 3 files: rope_theta + rope_scaling for the global layers, rope_local_base_freq for the others
        rp = {"full_attention": {"rope_theta": theta, **rp},
              "sliding_attention": {"rope_type": "default", "rope_theta": float(c.get("rope_local_base_freq", 1e4))}}
    if rp and all(isinstance(v, dict) for v in rp.values()):
        if arch != "gemma3" or sorted(rp) != ["full_attention", "sliding_attention"]:
            return {"rope_key": where, "rope_theta": theta, "unsupported": {"rope": (
                f"{where} gives one RoPE per layer type ({sorted(rp)}); frozenlm reproduces that for Gemma 3's "
                f"full_attention/sliding_attention layers only")}}
        out = _one_rope(rp["full_attention"], c, arch, f"{where}.full_attention", theta)
        local = _one_rope(rp["sliding_attention"], c, arch, f"{where}.sliding_attention", 10000.0)
        out["unsupported"] = {**local["unsupported"], **out["unsupported"]}
        out["local_rope"] = {"rope_theta": local["rope_theta"], "rope_scaling": local.get("rope_scaling")}
        out["rope_key"] = where  # refusals then name "... rope_parameters" or "... rope_parameters (sliding layers)"
        return out
    return _one_rope(rp, c, arch, where, theta)


def _one_rope(rp: dict[str, Any], c: dict[str, Any], arch: str, where: str, theta: float) -> dict[str, Any]:
    """rope_theta / rope_scaling / rope_key of one RoPE parameter dict."""
    out: dict[str, Any] = {"rope_key": where, "unsupported": {}}
    out["rope_theta"] = float(rp.get("rope_theta", theta))
    partial = rp.get("partial_rotary_factor", c.get("partial_rotary_factor"))
    if partial is not None and float(partial) != 1.0:
        out["unsupported"]["rope"] = (f"config.json partial_rotary_factor={partial}: RoPE on part of each head "
                                      f"is not implemented")
    kind = rp.get("rope_type", rp.get("type", "default"))
    if kind == "mrope":
        # Qwen2-VL's multimodal RoPE: with one position per token (rope='1d') it is the plain rotation
        kind = "default"
    if kind == "default":
        out["rope_scaling"] = None
        return out
    sc = {k: v for k, v in rp.items() if k not in ("type", "rope_theta", "partial_rotary_factor", "mrope_section")}
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
    if arch in ("mistral", "phi3"):
        # MistralConfig defaults to 4096 when the key is absent, Phi3Config to None; both models apply
        # the window to every layer and ignore layer_types.
        w = c.get("sliding_window", 4096 if arch == "mistral" else None)
        out["layer_windows"] = [w] * n_layers if w is not None else None
        return out
    if arch in SLIDING_PATTERN:
        pattern = c.get("sliding_window_pattern") or c.get("_sliding_window_pattern") or SLIDING_PATTERN[arch]
        types = c.get("layer_types") or ["sliding_attention" if (i + 1) % pattern else "full_attention"
                                         for i in range(n_layers)]
        _windows(out, types, c.get("sliding_window", 4096), n_layers)
        return out
    if arch in ("qwen2", "qwen3"):
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
