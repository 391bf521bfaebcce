"""Motion forecasting loss and metrics (Argoverse conventions), as sums for the engine.

For each sample the K predicted modes are ranked by probability (softmax of the logits):
  K=1: the most probable mode's ADE / FDE, miss if its FDE > 2 m.
  K=6: among the 6 most probable modes, the mode with the smallest FDE defines minFDE, minADE
       (its ADE, as the Argoverse 1 evaluation does) and a miss (minFDE > 2 m);
       brier-minFDE = minFDE + (1 - p)^2 with p that mode's probability renormalised over the 6.
Miss rates (MR) are reported in percent, as the paper does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .metrics import sample_count

MISS_THRESHOLD = 2.0


def wta_loss(traj: Tensor, logits: Tensor, target: Tensor, cls_weight: float = 1.0, relax: float = 0.0) -> Tensor:
    """Winner-takes-all: smooth-L1 on the mode closest to the ground truth (by ADE) + CE on its score.

    traj (B, K, T, 2), logits (B, K), target (B, T, 2) -> scalar. `relax` > 0 is the relaxed WTA of
    Rupprecht et al. (2017): the winner gets weight 1 - relax and every mode relax / K, so modes that
    never win early still move toward the data instead of staying where they were initialised.
    """
    ade = (traj - target[:, None]).norm(dim=-1).mean(-1)  # (B, K)
    best = ade.argmin(-1)
    per_mode = F.smooth_l1_loss(traj, target[:, None].expand_as(traj), reduction="none").mean((-1, -2))  # (B, K)
    winner = per_mode.gather(1, best[:, None])[:, 0]
    reg = ((1.0 - relax) * winner + relax * per_mode.mean(-1)).mean()
    return reg + cls_weight * F.cross_entropy(logits, best)


def forecast_sums(traj: Tensor, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
    """Per-batch sums: ade/fde/miss at K=1 and K=6, brier_fde_6 and count (see module docstring)."""
    traj, target = traj.double(), target.double()
    probs = logits.double().softmax(-1)
    order = probs.argsort(-1, descending=True)
    idx = torch.arange(len(traj), device=traj.device)[:, None]
    traj, probs = traj[idx, order], probs[idx, order]  # sorted by probability
    err = (traj - target[:, None]).norm(dim=-1)  # (B, K, T)
    ade, fde = err.mean(-1), err[..., -1]
    out = {"count": torch.tensor(float(len(traj)), dtype=torch.float64, device=traj.device)}
    out["ade_1"], out["fde_1"] = ade[:, 0].sum(), fde[:, 0].sum()
    out["miss_1"] = (fde[:, 0] > MISS_THRESHOLD).double().sum()
    k = min(6, traj.shape[1])
    fde_k, j = fde[:, :k].min(-1)
    p = probs[:, :k] / probs[:, :k].sum(-1, keepdim=True)
    out["ade_6"] = ade[:, :k].gather(1, j[:, None]).sum()
    out["fde_6"] = fde_k.sum()
    out["miss_6"] = (fde_k > MISS_THRESHOLD).double().sum()
    out["brier_fde_6"] = (fde_k + (1.0 - p.gather(1, j[:, None])[:, 0]) ** 2).sum()
    return out


def forecast_finalize(sums: dict[str, Tensor]) -> dict[str, float]:
    """Sums -> minADE_6, minFDE_6, MR_6 (%), brier_minFDE_6, minADE_1, minFDE_1, MR_1 (%), loss."""
    n = sample_count(sums)
    out = {"minADE_6": float(sums["ade_6"]) / n, "minFDE_6": float(sums["fde_6"]) / n,
           "MR_6": 100.0 * float(sums["miss_6"]) / n, "brier_minFDE_6": float(sums["brier_fde_6"]) / n,
           "minADE_1": float(sums["ade_1"]) / n, "minFDE_1": float(sums["fde_1"]) / n,
           "MR_1": 100.0 * float(sums["miss_1"]) / n}
    if "loss_sum" in sums:
        out["loss"] = float(sums["loss_sum"]) / n
    return out
