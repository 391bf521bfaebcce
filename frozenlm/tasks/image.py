"""Image classification: ViT (or any `timm:<name>` model) + LMLayer on ImageNet-style data or the offline
Fashion-MNIST default."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import section
from ..data import build_image_dataset, build_loss, build_mixup, get_num_classes, mask_logits
from ..data.errors import DropSkipped
from ..data.imagenet_variants import ImageNetCConcat, PartTagged, summarize_imagenet_c
from ..data.transforms import MIXUP_KEYS
from ..layer import lm_config_keys
from ..models import create_model
from .base import Task, model_kwargs
from .metrics import classification_finalize, group_accuracy, group_sums, topk_sums


#: model keys of the ViT(+LMLayer) classifier ("*": any timm model argument; timm checks those).
#: `model.lm.at` names the module a `timm:<name>` model's LM layer follows; `freeze` is the older
#: spelling of `freeze_backbone` (null | backbone).
VIT_MODEL_KEYS = (
    *section("model", "name", "position", "num_classes", "img_size", "in_chans", "drop_path_rate",
             "pretrained_path", "freeze_backbone", "freeze", "*"),
    *lm_config_keys("model.lm"),
    "model.lm.at",
)


class ImageClassification(Task):
    """ViT(+LMLayer) classifier; top-1/top-5, 200-class logit masking for ImageNet-A/R."""

    primary_metric, primary_mode = "top1", "max"
    config_keys = (
        *VIT_MODEL_KEYS,
        *section("data", "name", "root", "num_classes", "train_dir", "val_dir", "subset_train", "subset_val",
                 "subset_seed", "download", "train_shards", "val_shards", "cache_index", "label_space",
                 "strict_wnids", "corruptions", "severities", "img_size", "in_chans", "mean", "std", "crop_padding",
                 "hflip", "reprob", "auto_augment", "remode", "recount", "interpolation", "scale", "color_jitter",
                 "crop_pct", *MIXUP_KEYS, "on_error", "val_labels"),
    )

    def __init__(self) -> None:
        self._mixup: Any = None
        self._loss: nn.Module | None = None
        self._class_indices: Tensor | None = None
        self._c_parts: list[tuple[str, int]] | None = None

    def build_model(self, cfg: Any) -> nn.Module:
        return create_model(cfg.model.name, **model_kwargs(cfg, num_classes=cfg.data.get("num_classes") or 1000,
                                                            in_chans=cfg.data.get("in_chans") or None,
                                                            img_size=cfg.data.get("img_size") or None))

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
        if isinstance(ds, ImageNetCConcat):
            self._c_parts = ds.parts
            return PartTagged(ds)
        return ds

    def collate_fn(self, cfg: Any, split: str) -> DropSkipped:
        return DropSkipped()  # PyTorch's default collate after dropping skipped (unreadable) images

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
        x, y, *part = batch
        logits = model(x).float()
        if self._class_indices is not None:
            logits = mask_logits(logits, self._class_indices.to(logits.device))
        sums = topk_sums(logits, y, ks=(1, 5), loss=F.cross_entropy(logits, y, reduction="none"))
        if part and self._c_parts is not None:
            sums.update(group_sums(logits.argmax(-1) == y, part[0], len(self._c_parts), prefix="c"))
        return sums

    def finalize(self, sums: dict[str, Tensor], cfg: Any) -> dict[str, float]:
        out = classification_finalize({k: v for k, v in sums.items() if not k.startswith("c_")})
        if "c_correct" in sums and self._c_parts is not None:
            acc = {self._c_parts[i]: a for i, a in group_accuracy(sums, prefix="c").items()}
            out.update({f"imagenet_c/{k}": v for k, v in summarize_imagenet_c(acc).items()})
        return out
