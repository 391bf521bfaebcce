"""Image classification: ViT + LMLayer on ImageNet-style data or the offline Fashion-MNIST default."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import build_image_dataset, build_loss, build_mixup, get_num_classes, mask_logits
from ..engine.classification import classification_finalize, topk_sums
from ..engine.task import Task, register_task
from ..models import create_model


def model_kwargs(cfg: Any) -> dict[str, Any]:
    """Arguments of `create_model` from the config's `model:` section (name excluded)."""
    m = dict(cfg.model)
    m.pop("name")
    if m.get("num_classes") is None:
        m["num_classes"] = cfg.data.get("num_classes") or 1000
    if cfg.data.get("in_chans") and m.get("in_chans") is None:
        m["in_chans"] = cfg.data.in_chans
    if cfg.data.get("img_size") and m.get("img_size") is None:
        m["img_size"] = cfg.data.img_size
    return m


@register_task("image")
class ImageClassification(Task):
    """ViT(+LMLayer) classifier; top-1/top-5, 200-class logit masking for ImageNet-A/R."""

    def __init__(self) -> None:
        self._mixup: Any = None
        self._loss: nn.Module | None = None
        self._class_indices: Tensor | None = None

    def build_model(self, cfg: Any) -> nn.Module:
        # The task object is shared across runs in one process (ablations): drop per-run state.
        self._mixup, self._loss, self._class_indices = None, None, None
        return create_model(cfg.model.name, **model_kwargs(cfg))

    def build_dataset(self, cfg: Any, split: str) -> Any:
        ds = build_image_dataset(cfg.data, split)
        n_model = cfg.model.get("num_classes") or cfg.data.get("num_classes")
        n_data = get_num_classes(ds)
        idx = getattr(ds, "class_indices", None)
        if split != "train" and idx is not None and getattr(ds, "label_space", "1k") == "subset":
            self._class_indices = torch.as_tensor(idx)  # ImageNet-A/R: score on their 200 classes
        elif n_model is not None and n_data > int(n_model):
            raise ValueError(f"data {cfg.data.name!r} ({split}) has {n_data} classes but the model head has "
                             f"{n_model}; set model.num_classes / data.num_classes to match")
        return ds

    def train_step_loss(self, model: nn.Module, batch: Any, cfg: Any) -> Tensor:
        x, y = batch
        if self._loss is None:
            n = cfg.model.get("num_classes") or cfg.data.num_classes
            self._mixup = build_mixup(cfg.data, n)
            self._loss = build_loss(cfg.data)
        if self._mixup is not None:
            x, y = self._mixup(x, y)
        return self._loss(model(x).float(), y)

    def eval_batch(self, model: nn.Module, batch: Any, cfg: Any) -> dict[str, Tensor]:
        x, y = batch
        logits = model(x).float()
        if self._class_indices is not None:
            logits = mask_logits(logits, self._class_indices.to(logits.device))
        return topk_sums(logits, y, ks=(1, 5), loss=F.cross_entropy(logits, y, reduction="none"))

    def finalize(self, sums: dict[str, Tensor], cfg: Any) -> dict[str, float]:
        return classification_finalize(sums)
