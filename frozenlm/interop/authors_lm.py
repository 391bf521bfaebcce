"""The frozen LLaMA layer stored inside an authors' checkpoint: its architecture, its canonical form,
the comparison with the user's LLaMA source, and writing it out as a safetensors LM source.

The authors' block is Meta's LLaMA code with RoPE and the causal mask removed (``models/llama.py`` of
ziqipang/LM4VisualEncoding): full multi-head attention (no grouped KV heads), SwiGLU, RMSNorm, and q/k
rows in Meta's interleaved rotary order, as copied from ``consolidated.00.pth``. frozenlm keeps every
block in Hugging Face's row order (``frozenlm.lm.readers.base.unpermute_rotary``, the same conversion
the Meta reader applies), so after conversion the stored layer and a layer read from any source
(Meta or HF directory) have the same digest exactly when they hold the same weights.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError
from ..lm.config import BlockConfig
from ..lm.load import tensor_digest
from ..lm.readers.base import unpermute_rotary
from ..lm.readers.hf import LLAMA_KEYS
from ..lm.stack import BlockStack
from .authors_keys import SplitState

__all__ = ["LLAMA1_BY_DIM", "stored_config", "canonical_layers", "stored_stack", "compare_blocks", "write_lm_dir"]

#: What the authors' code hard-codes for its LLaMA (LLaMA-1 7B: dim 4096; models/vit_llama.py and the
#: Point-BERT configs): the head count and RMSNorm eps, which the stored tensors' shapes do not say.
LLAMA1_BY_DIM = {4096: {"n_heads": 32, "norm_eps": 1e-6}}


def stored_config(split: SplitState, heads: int | None, norm_eps: float | None, where: Any) -> BlockConfig:
    """Architecture of the stored layer(s) from their shapes, plus the head count and eps (given, or the
    authors' LLaMA-7B values for a 4096-wide block)."""
    first = split.llama[0]
    dim, ffn = int(first["attn.q.weight"].shape[1]), int(first["ffn.gate.weight"].shape[0])
    known = LLAMA1_BY_DIM.get(dim, {})
    heads = heads if heads is not None else known.get("n_heads")
    norm_eps = norm_eps if norm_eps is not None else known.get("norm_eps")
    if heads is None or norm_eps is None:
        raise CheckpointError(f"{where}: the stored LLaMA layer is {dim} wide, not LLaMA-7B's 4096, so its head "
                              f"count and RMSNorm eps are unknown: give --lm-heads and --lm-norm-eps, or --lm with "
                              f"the LLaMA it came from")
    if dim % heads:
        raise CheckpointError(f"{where}: the stored layer is {dim} wide, which {heads} heads do not divide")
    # The authors' block has no grouped KV heads; a narrower wk is caught by the shape check.
    return BlockConfig(family="llama", arch="llama", dim=dim, n_heads=heads, n_kv_heads=heads, ffn_dim=ffn,
                       n_layers=len(split.llama), norm_eps=float(norm_eps))


def canonical_layers(split: SplitState, cfg: BlockConfig, where: Any, against: str) -> list[dict[str, Tensor]]:
    """The stored layers in frozenlm's canonical names and HF row order (float32), every shape checked
    against ``cfg`` (``against`` names where ``cfg`` came from, for the message)."""
    expected, bad, out = cfg.expected_shapes(), [], []
    for layer, names in zip(split.llama, split.llama_names):
        for canon, t in layer.items():
            if canon not in expected:
                bad.append(f"{names[canon]} is not a tensor of a {against} block")
            elif tuple(t.shape) != expected[canon]:
                bad.append(f"{names[canon]} has shape {tuple(t.shape)}, {against} implies {expected[canon]}")
        if bad:
            continue
        conv = {k: v.float() for k, v in layer.items()}
        conv["attn.q.weight"] = unpermute_rotary(conv["attn.q.weight"], cfg.n_heads)
        conv["attn.k.weight"] = unpermute_rotary(conv["attn.k.weight"], cfg.n_kv_heads)
        out.append({k: v.contiguous() for k, v in conv.items()})
    if bad:
        raise CheckpointError(f"{where}: the stored LLaMA layer does not fit {against} ({cfg.dim} wide, "
                              f"{cfg.n_heads} heads, {cfg.n_kv_heads} KV heads, FFN {cfg.ffn_dim}): " + "; ".join(bad))
    return out


def stored_stack(layers: list[dict[str, Tensor]], cfg: BlockConfig, indices: list[int]) -> BlockStack:
    """A float32 BlockStack holding the stored layers (the paper's mode: no mask, no RoPE)."""
    with torch.device("meta"):
        stack = BlockStack(cfg, n_blocks=len(layers), layer_indices=indices)
    for blk, tensors in zip(stack.layers, layers):
        blk.load_state_dict(tensors, strict=True, assign=True)
    return stack.requires_grad_(False)


def compare_blocks(stored: BlockStack, source: BlockStack, where: Any, source_desc: str, hint: str) -> str:
    """Refuse a source whose block differs from the stored one; returns the common SHA-256 digest.

    Both are compared in float32 (the authors' checkpoints store float32 copies of LLaMA's float16 weights,
    so upcasting either side is exact). The error names every differing tensor and its largest difference.
    """
    if any(p.dtype != torch.float32 for p in source.parameters()):
        raise TypeError("compare_blocks needs the source block in float32 (load it with dtype=torch.float32)")
    src = source
    a, b = tensor_digest(stored), tensor_digest(src)
    if a == b:
        return a
    diffs = []
    sa, sb = stored.state_dict(), src.state_dict()
    for k in sorted(set(sa) | set(sb)):
        if k not in sa or k not in sb or sa[k].shape != sb[k].shape:
            diffs.append(f"{k}: present or shaped differently on one side only")
        elif not torch.equal(sa[k], sb[k]):
            diffs.append(f"{k}: max |difference| {float((sa[k] - sb[k]).abs().max()):.3g}")
    raise CheckpointError(
        f"{where}: the LLaMA layer stored in the checkpoint is not {source_desc} (digest of the stored layer, "
        f"q/k converted from Meta's row order: {a[:16]}..., of the source: {b[:16]}...). Differing tensors: "
        + "; ".join(diffs[:9]) + (f" ... ({len(diffs)} in all)" if len(diffs) > 9 else "")
        + f". {hint} Or leave out --lm to use the stored layer itself as the frozen block.")


def write_lm_dir(path: Path, stack: BlockStack, cfg: BlockConfig, provenance: dict[str, Any]) -> Path:
    """Write the stored layer(s) as a Hugging Face-style LLaMA directory (config.json + model.safetensors)
    that every frozenlm LM reader accepts: ``len(stack.layers)`` layers, no embeddings, HF row order."""
    from safetensors.torch import save_file
    path.mkdir(parents=True, exist_ok=False)
    tensors = {f"model.layers.{j}.{LLAMA_KEYS[k]}": v.detach().contiguous()
               for j, blk in enumerate(stack.layers) for k, v in blk.state_dict().items()}
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": cfg.dim,
              "intermediate_size": cfg.ffn_dim, "num_attention_heads": cfg.n_heads,
              "num_key_value_heads": cfg.n_kv_heads, "num_hidden_layers": len(stack.layers),
              "rms_norm_eps": cfg.norm_eps, "hidden_act": "silu", "rope_theta": cfg.rope_theta,
              "max_position_embeddings": 2048, "torch_dtype": "float32",
              # frozenlm reads only the keys above; this records what the layers are
              "frozenlm_extracted": provenance}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return path
