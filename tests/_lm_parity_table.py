"""Prints docs/core.md's parity table: max |diff| of frozenlm's blocks against transformers' layers.

    PYTHONPATH=.:tests python tests/_lm_parity_table.py

The same tiny random models and references as tests/test_lm_families.py (which asserts < 1e-5); every
layer of each model, in the paper's mode (mask none, no RoPE) and with rope='1d', mask='causal'.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import ckpt_factory as F
import frozenlm
from test_lm_families import B, FAMILIES, N, STD, paper_mode_reference
from test_rope_modes import layer_io


def max_diffs(path: Path, lm: torch.nn.Module, head_dim: int, causal_mode: bool = True) -> tuple[float, float | str]:
    """(paper mode, rope='1d' + causal): the largest |frozenlm - transformers| over all layers."""
    x = torch.randn(B, N, F.DIM, generator=torch.Generator().manual_seed(0))
    ins, outs = layer_io(lm, x)
    paper = causal = 0.0
    with torch.no_grad():
        for k, layer in enumerate(F.reference_layers(lm)):
            got = frozenlm.load_blocks(str(path), [k])(x)
            paper = max(paper, (got - paper_mode_reference(layer, x, head_dim)).abs().max().item())
            if causal_mode:
                got = frozenlm.load_blocks(str(path), [k], mask="causal", rope="1d")(ins[k])
                causal = max(causal, (got - outs[k]).abs().max().item())
    return paper, causal if causal_mode else "refused"


def main() -> None:
    root = Path(tempfile.mkdtemp())
    rows = []
    for kind in FAMILIES:
        model = F.make_model(kind, seed=30, std=STD)
        hd = getattr(model.config, "head_dim", None) or F.DIM // F.HEADS
        rows.append((kind, "HF safetensors", *max_diffs(F.save_hf(model, root / kind), model, hd)))
        kw = {"query_pre_attn_scalar": F.NEW_HEAD_DIM} if kind.startswith("gemma") else {}
        kw = {"use_sliding_window": False} if kind == "qwen3" else kw
        model = F.make_model(kind, seed=50, std=STD, **kw)
        # llama.cpp does not say whether Phi-3 slides: the causal mode is refused for its GGUF
        rows.append((kind, "GGUF (llama.cpp layout)", *max_diffs(
            F.write_gguf(model, root / f"{kind}.gguf", arch=kind), model, hd, causal_mode=kind != "phi3")))
    for kind in ("llava", "gemma3mm", "qwen2vl"):
        model, lm = F.make_multimodal(kind, seed=60)
        hd = frozenlm.source_config(str(F.save_hf(model, root / kind))).head_dim
        rows.append((kind, "HF multimodal", *max_diffs(root / kind, lm, hd)))
    print("| model | source | paper mode | rope=1d, causal |\n|---|---|---|---|")
    for kind, src, paper, causal in rows:
        print(f"| {kind} | {src} | {paper:.1e} | {causal if isinstance(causal, str) else f'{causal:.1e}'} |")


if __name__ == "__main__":
    main()
