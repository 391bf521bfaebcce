"""BatchNorm cases shared by tests/test_ddp_bn.py (reference on the whole batch) and
tests/_syncbn_script.py (the same batch split over ranks, possibly unevenly)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: name -> layer, per-step input shape, where the global batch is cut between ranks 0 and 1, steps.
CASES: dict[str, dict[str, Any]] = {
    "conv1d_uneven": dict(layer=lambda: nn.BatchNorm1d(6), shape=(10, 6, 7), split=(0, 6, 10), steps=2),
    "flat_cumulative": dict(layer=lambda: nn.BatchNorm1d(5, momentum=None), shape=(8, 5), split=(0, 4, 8), steps=3),
    "2d_no_affine": dict(layer=lambda: nn.BatchNorm2d(3, affine=False), shape=(4, 3, 2, 3), split=(0, 1, 4),
                         steps=2),
}


def make(case: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor], nn.Module]:
    """Inputs (offset and scaled per channel, so mean and variance matter), output projections
    (the loss is sum(y * proj)), and the layer with non-trivial affine parameters."""
    g = torch.Generator().manual_seed(0)
    bn = case["layer"]()
    c = case["shape"][1]
    if bn.affine:
        with torch.no_grad():
            bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(c, generator=g))
    view = (1, c) + (1,) * (len(case["shape"]) - 2)
    xs = [torch.randn(case["shape"], generator=g) * (torch.rand(view, generator=g) * 3 + 0.2)
          + torch.randn(view, generator=g) * 4 for _ in range(case["steps"])]
    projs = [torch.randn(case["shape"], generator=g) for _ in range(case["steps"])]
    return xs, projs, bn
