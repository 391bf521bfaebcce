"""Reusable metric sums for classification tasks (image, point cloud, video)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = ["topk_sums", "classification_finalize"]


def topk_sums(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5),
              loss: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
    """Sums for top-k accuracy: ``correct{k}`` for each k, ``count``, and ``loss_sum`` if a
    per-sample ``loss`` is given. ``target`` may be class indices or soft/one-hot labels."""
    if target.ndim == logits.ndim:
        target = target.argmax(dim=-1)
    kmax = min(max(ks), logits.shape[-1])
    pred = logits.topk(kmax, dim=-1).indices
    hit = pred.eq(target.unsqueeze(-1))
    out = {f"correct{k}": hit[:, : min(k, kmax)].any(dim=-1).sum().double() for k in ks}
    out["count"] = torch.tensor(float(target.numel()), dtype=torch.float64, device=logits.device)
    if loss is not None:
        out["loss_sum"] = loss.detach().double().sum()
    return out


def classification_finalize(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """Top-k accuracies in percent (``top1``, ``top5``...) and mean ``loss`` from :func:`topk_sums`."""
    count = float(sums["count"])
    if count == 0:
        raise ValueError("no evaluation samples were seen (empty dataset?)")
    ks = sorted(int(k[len("correct"):]) for k in sums if k.startswith("correct"))
    out = {f"top{k}": 100.0 * float(sums[f"correct{k}"]) / count for k in ks}
    if "loss_sum" in sums:
        out["loss"] = float(sums["loss_sum"]) / count
    return out
