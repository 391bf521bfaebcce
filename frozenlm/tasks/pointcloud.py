"""Point-cloud classification: Point-BERT + LMLayer on ScanObjectNN, ModelNet40 or the offline shapes.

Metrics as the paper reports them: ``OA`` (overall accuracy, %) and ``mAcc`` (mean class accuracy, %).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import section
from ..data.pointcloud import build_pointcloud_dataset, sample_points, scale_and_translate
from ..layer import lm_config_keys
from ..models import create_model
from .base import Task, model_kwargs
from .metrics import group_sums, mean_group_accuracy, sample_count

__all__ = ["PointCloudClassification", "pointcloud_finalize"]


def pointcloud_finalize(sums: dict[str, Tensor]) -> dict[str, float]:
    """OA, mAcc (over classes that occur) and mean loss from summed counts."""
    count = sample_count(sums)
    out = {"OA": 100.0 * float(sums["correct"]) / count, "mAcc": mean_group_accuracy(sums)}
    if "loss_sum" in sums:
        out["loss"] = float(sums["loss_sum"]) / count
    return out


class PointCloudClassification(Task):
    """Point-BERT(+LMLayer) classifier with Point-BERT's batch sampling, augmentation and optional voting."""

    primary_metric, primary_mode = "OA", "max"
    config_keys = (
        *section("model", "name", "num_classes", "pretrained_path", "trans_dim", "depth", "num_heads",
                 "encoder_dims", "num_group", "group_size", "encoder_widths", "drop_path_rate", "head_dropout",
                 "fps_start"),
        *lm_config_keys("model.lm"),
        *section("data", "name", "root", "num_classes", "num_points", "train_fps_points", "augment", "smoothing",
                 "votes", "variant", "file_points", "train_per_class", "test_per_class", "shapes", "cache_dir",
                 "shapes_seed", "on_error", "point_selection"),
        "optim.adapter_lr_mult",
    )

    def build_model(self, cfg: Any) -> nn.Module:
        return create_model(cfg.model.name, **model_kwargs(cfg, num_classes=cfg.data.get("num_classes") or 40))

    def build_dataset(self, cfg: Any, split: str) -> Any:
        ds = build_pointcloud_dataset(cfg.data, split)
        n_model = cfg.model.get("num_classes") or cfg.data.get("num_classes")
        if n_model is not None and ds.num_classes > int(n_model):
            raise ValueError(f"data {cfg.data.name!r} ({split}) has {ds.num_classes} classes but the model head has "
                             f"{n_model}; set data.num_classes (or model.num_classes) to match")
        return ds

    def train_step_loss(self, model: nn.Module, batch: Any, cfg: Any) -> Tensor:
        points, y = batch
        points = sample_points(points, int(cfg.data.num_points), cfg.data.get("train_fps_points"))
        if cfg.data.get("augment", True):
            points = scale_and_translate(points)
        return F.cross_entropy(model(points).float(), y, label_smoothing=float(cfg.data.get("smoothing", 0.0)))

    def eval_batch(self, model: nn.Module, batch: Any, cfg: Any) -> dict[str, Tensor]:
        points, y = batch
        points = sample_points(points, int(cfg.data.num_points))
        logits = model(points).float()
        votes = int(cfg.data.get("votes") or 1)
        for _ in range(votes - 1):  # Point-BERT's voting: average logits over scale-and-translate copies
            logits = logits + model(scale_and_translate(points)).float()
        logits = logits / votes
        n = int(cfg.model.get("num_classes") or cfg.data.num_classes)
        hit = (logits.argmax(-1) == y).double()
        return {"correct": hit.sum(), "count": torch.tensor(float(len(y)), dtype=torch.float64, device=y.device),
                **group_sums(hit, y, n), "loss_sum": F.cross_entropy(logits, y, reduction="sum").double()}

    def finalize(self, sums: dict[str, Tensor], cfg: Any) -> dict[str, float]:
        return pointcloud_finalize(sums)

    def lr_mults(self, model: nn.Module, cfg: Any) -> Optional[dict[str, float]]:
        """``optim.adapter_lr_mult`` (paper: 0.5) on the LMLayer's trainable parameters; the engine's
        ``optim.no_decay_lr_mult`` (paper: 0.1) applies on top to no-decay ones."""
        mult = cfg.optim.get("adapter_lr_mult")
        return None if mult is None else {"lm_layer.": float(mult)}
