"""Metric sums shared by the classification-style tasks (image, point cloud, video, SQA3D)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = ["sample_count", "topk_sums", "classification_finalize", "group_sums", "group_accuracy",
           "mean_group_accuracy"]


def sample_count(sums: dict[str, torch.Tensor], key: str = "count") -> float:
    """The summed number of evaluation samples; a clear error when there were none (an empty split)."""
    n = float(sums[key])
    if n == 0:
        raise ValueError("no evaluation samples were seen (empty dataset?)")
    return n


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
    count = sample_count(sums)
    ks = sorted(int(k[len("correct"):]) for k in sums if k.startswith("correct"))
    out = {f"top{k}": 100.0 * float(sums[f"correct{k}"]) / count for k in ks}
    if "loss_sum" in sums:
        out["loss"] = float(sums["loss_sum"]) / count
    return out


def group_sums(hit: torch.Tensor, group: torch.Tensor, n: int, prefix: str = "class") -> dict[str, torch.Tensor]:
    """Per-group sums of a batch: ``{prefix}_correct`` (hits per group) and ``{prefix}_count`` (samples per
    group), float64 vectors of length ``n``; ``group`` holds each sample's group (class, part, type) index."""
    correct = torch.zeros(n, dtype=torch.float64, device=group.device).index_add_(0, group, hit.double())
    return {f"{prefix}_correct": correct, f"{prefix}_count": torch.bincount(group, minlength=n).double()}


def group_accuracy(sums: dict[str, torch.Tensor], prefix: str = "class") -> dict[int, float]:
    """Accuracy in percent of every group that occurs, ``{group index: %}``, from summed :func:`group_sums`."""
    return {i: 100.0 * float(c) / float(n) for i, (c, n) in enumerate(zip(sums[f"{prefix}_correct"],
                                                                          sums[f"{prefix}_count"])) if float(n) > 0}


def mean_group_accuracy(sums: dict[str, torch.Tensor], prefix: str = "class") -> float:
    """Mean over the groups that occur of their accuracy, in percent (mAcc for classes)."""
    count, correct = sums[f"{prefix}_count"], sums[f"{prefix}_correct"]
    seen = count > 0
    return 100.0 * float((correct[seen] / count[seen]).mean())
