"""A/B of one frozen LM block with packed q/k/v and gate/up GEMMs against one GEMM per projection,
interleaved run by run so that background load hits both alike (docs/performance.md).

    python benchmarks/packed_gemm.py {smollm2,llama7b} REPEATS [bf16w]
"""
from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from frozenlm.lm.block import Block  # noqa: E402
from frozenlm.lm.config import BlockConfig  # noqa: E402

SHAPES = {"llama7b": (BlockConfig(family="llama", dim=4096, n_heads=32, ffn_dim=11008, n_layers=1), 8, 197),
          "smollm2": (BlockConfig(family="llama", dim=576, n_heads=9, n_kv_heads=3, ffn_dim=1536, n_layers=1), 128, 5)}


def main() -> None:
    kind, reps = sys.argv[1], int(sys.argv[2])
    cfg, b, n = SHAPES[kind]
    torch.manual_seed(0)
    packed = Block(cfg)
    for p in packed.parameters():
        nn.init.normal_(p, std=0.02)
    packed.requires_grad_(False).to(torch.bfloat16 if "bf16w" in sys.argv else torch.float32)
    separate = copy.deepcopy(packed)
    for m in separate.modules():
        for p in m.parameters(recurse=False):
            p.data = p.data.clone()  # own storage each: the packed path cannot run
    x = torch.randn(b, n, cfg.dim)

    def step(m: nn.Module, train: bool) -> None:
        xx = x.clone().requires_grad_(train)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(xx)
        if train:
            y.float().sum().backward()

    for train in (False, True):
        times: dict[str, list[float]] = {"packed": [], "separate": []}
        for m in (packed, separate):
            step(m, train)
        for _ in range(reps):
            for name, m in (("packed", packed), ("separate", separate)):
                t = time.perf_counter()
                step(m, train)
                times[name].append(time.perf_counter() - t)
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        print(f"{kind} {'fwd+bwd' if train else 'fwd'}: packed {med['packed'] * 1e3:.1f} ms, "
              f"separate {med['separate'] * 1e3:.1f} ms, speed-up {med['separate'] / med['packed']:.3f}x")


if __name__ == "__main__":
    main()
