"""Pseudo-mask evaluation: activation > t against token-resolution ground truth, best t per image."""
from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import Tensor

THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 10))
IGNORE = 255  # mask value for pixels that count neither as foreground nor as background


def mask_to_tokens(mask: Tensor, grid: tuple[int, int], ignore_index: int = IGNORE) -> tuple[Tensor, Tensor]:
    """Pixel mask (H, W) or (B, H, W) with 0 = background, 1 = foreground, `ignore_index` = ignore
    -> (foreground, valid) bool maps at token resolution (B, h, w).

    A token is foreground when most of its valid pixels are foreground, and valid when most of
    its pixels are not ignored (area pooling, so any image size maps onto the patch grid).
    """
    m = mask if mask.dim() == 3 else mask.unsqueeze(0)
    m = m.long()
    ign = (m == ignore_index).float().unsqueeze(1)
    fg = (m == 1).float().unsqueeze(1)
    ign_frac = F.adaptive_avg_pool2d(ign, grid)[:, 0]
    fg_frac = F.adaptive_avg_pool2d(fg, grid)[:, 0]
    valid_frac = (1 - ign_frac).clamp_min(1e-12)
    fg_tok = (fg_frac / valid_frac) > 0.5
    valid = ign_frac < 0.5
    return fg_tok & valid, valid


def iou(pred: Tensor, gt: Tensor, valid: Tensor | None = None) -> float:
    """TP / (TP + FP + FN) over valid tokens; 1.0 when both masks are empty."""
    pred, gt = pred.bool(), gt.bool()
    if valid is not None:
        pred, gt = pred & valid.bool(), gt & valid.bool()
    tp = (pred & gt).sum().item()
    fp = (pred & ~gt).sum().item()
    fn = (~pred & gt).sum().item()
    den = tp + fp + fn
    return 1.0 if den == 0 else tp / den


def best_iou(act: Tensor, gt: Tensor, valid: Tensor | None = None,
             thresholds: tuple[float, ...] = THRESHOLDS) -> tuple[float, float]:
    """(best IoU, its threshold) of the pseudo-mask act > t over t in `thresholds` (first t on ties)."""
    best, best_t = -1.0, thresholds[0]
    for t in thresholds:
        v = iou(act > t, gt, valid)
        if v > best:
            best, best_t = v, t
    return best, best_t


class MIoUAccumulator:
    """Collects the per-image best IoU for each named map (stage, attention) and averages them.

    skip_empty: leave out images with no foreground token. A min-max map always has a token at
    1.0, so its pseudo-mask is never empty and such an image would score 0 for every map; it
    measures the token grid's coarseness, not the features. `skipped` counts them.
    """

    def __init__(self, thresholds: tuple[float, ...] = THRESHOLDS, skip_empty: bool = True) -> None:
        self.thresholds = thresholds
        self.skip_empty = skip_empty
        self.ious: dict[str, list[float]] = defaultdict(list)
        self.best_t: dict[str, list[float]] = defaultdict(list)
        self.skipped: dict[str, int] = defaultdict(int)

    def add(self, name: str, acts: Tensor, gts: Tensor, valid: Tensor | None = None) -> None:
        """acts (B, h, w) in [0, 1]; gts/valid (B, h, w) bool."""
        for i in range(acts.shape[0]):
            g = gts[i] if valid is None else gts[i] & valid[i].bool()
            if self.skip_empty and not bool(g.any()):
                self.skipped[name] += 1
                continue
            v, t = best_iou(acts[i], gts[i], None if valid is None else valid[i], self.thresholds)
            self.ious[name].append(v)
            self.best_t[name].append(t)

    def result(self) -> dict[str, float]:
        """{name: mIoU} in insertion order."""
        return {k: float(sum(v) / len(v)) for k, v in self.ious.items() if v}

    def mean_threshold(self) -> dict[str, float]:
        """{name: mean of the per-image best thresholds}."""
        return {k: float(sum(v) / len(v)) for k, v in self.best_t.items() if v}


def miou(acts: Tensor, gts: Tensor, valid: Tensor | None = None,
         thresholds: tuple[float, ...] = THRESHOLDS) -> float:
    """Mean over images of the best-threshold IoU."""
    acc = MIoUAccumulator(thresholds, skip_empty=False)
    acc.add("x", acts, gts, valid)
    return acc.result()["x"]
