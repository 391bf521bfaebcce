"""Video action recognition: VideoMAE-style ViT + LMLayer on SSv2 / Kinetics / offline moving shapes."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from ..config import section
from ..data import build_loss, build_mixup
from ..data.transforms import MIXUP_KEYS
from ..data.video import build_video_dataset, repeated_sample_collate, skip_none_collate
from ..errors import ConfigError
from ..layer import lm_config_keys
from ..models import create_model
from .base import Task, model_kwargs
from .metrics import classification_finalize, group_accuracy, group_sums, mean_group_accuracy, topk_sums


def layer_decay_mults(model: nn.Module, decay: float) -> dict[str, float]:
    """VideoMAE's layer-wise LR decay: a parameter of layer id i (0 = embeddings, depth+1 = LMLayer/fc_norm/head)
    gets decay ** (depth + 1 - i). Kept here rather than timm's param_groups_layer_decay, which builds whole
    optimizer groups under its own weight-decay rules and needs a timm group_matcher on the model."""
    top = model.num_layers + 1
    return {n: decay ** (top - model.layer_id(n)) for n, p in model.named_parameters() if p.requires_grad}


class VideoClassification(Task):
    """Clips (B, C, T, H, W) -> class; metrics top1, top5, mean per-class accuracy (and per class).

    Evaluation batches of (B, V, C, T, H, W) are multi-view: softmax scores are averaged over the
    V = temporal clips x spatial crops views before scoring, as in VideoMAE's test protocol.
    """

    primary_metric, primary_mode = "top1", "max"
    config_keys = (
        *section("model", "name", "layer_decay", "num_classes", "num_frames", "img_size", "pretrained_path",
                 "patch_size", "tubelet_size", "embed_dim", "depth", "num_heads", "in_chans", "mlp_ratio",
                 "qkv_bias", "drop_rate", "drop_path_rate", "init_scale", "grad_checkpointing"),
        *lm_config_keys("model.lm"),
        *section("data", "name", "num_classes", "root", "n_train", "n_val", "gen_seed", "frame_size", "gen_frames",
                 "labels_json", "train_json", "val_json", "video_dir", "train_video_dir", "val_video_dir", "layout",
                 "ext", "train_csv", "val_csv", "classes", "train_list", "val_list", "sampling", "num_frames",
                 "interval", "img_size", "short_side", "scale", "ratio", "hflip", "auto_augment", "num_sample",
                 "test_clips", "test_crops", "on_error", "min_frames", "backend", "seek", "cache", *MIXUP_KEYS),
    )

    def __init__(self) -> None:
        self._mixup: Any = None
        self._loss: nn.Module | None = None
        self._classes: list[str] | None = None

    def build_model(self, cfg: Any) -> nn.Module:
        return create_model(cfg.model.name, **model_kwargs(cfg, drop=("layer_decay",), num_classes=cfg.data.num_classes,
                                                            num_frames=cfg.data.get("num_frames"),
                                                            img_size=cfg.data.get("img_size")))

    def build_dataset(self, cfg: Any, split: str) -> Any:
        n_model = cfg.model.get("num_classes") or cfg.data.num_classes
        if int(n_model) != int(cfg.data.num_classes):
            raise ValueError(f"model.num_classes={n_model} but data.num_classes={cfg.data.num_classes}")
        if split == "train" and int(cfg.data.get("num_sample") or 1) > 1 and int(cfg.get("repeated_aug") or 1) > 1:
            raise ConfigError(f"data.num_sample={cfg.data.num_sample} (VideoMAE's repeated sampling) and "
                              f"repeated_aug={cfg.repeated_aug} (DeiT's, in the sampler) would repeat every video "
                              f"{int(cfg.data.num_sample) * int(cfg.repeated_aug)} times; set one of them to 1")
        ds = build_video_dataset(cfg.data, split)
        self._classes = ds.classes
        return ds

    def collate_fn(self, cfg: Any, split: str) -> Optional[Callable]:
        if split == "train" and int(cfg.data.get("num_sample") or 1) > 1:
            return repeated_sample_collate  # (B, S, ...) -> (B * S, ...): VideoMAE's multiple_samples_collate
        return skip_none_collate

    def lr_mults(self, model: nn.Module, cfg: Any) -> Optional[dict[str, float]]:
        decay = cfg.model.get("layer_decay")
        if decay is None or float(decay) == 1.0:
            return None
        return layer_decay_mults(model, float(decay))

    def train_step_loss(self, model: nn.Module, batch: Any, cfg: Any) -> Tensor:
        if batch is None:
            raise RuntimeError("every video of a training batch failed to decode (data.on_error=skip); "
                               "check the [data] skipping messages above")
        x, y = batch
        if self._loss is None:
            self._mixup = build_mixup(cfg.data, int(cfg.data.num_classes))
            self._loss = build_loss(cfg.data)
        if self._mixup is not None:
            if x.shape[0] % 2:  # timm's Mixup needs an even batch; a skipped video can make it odd
                x, y = x[:-1], y[:-1]
            # timm's Mixup mixes (B, C, H, W); fold time into channels so one box covers every frame.
            b, c, t, h, w = x.shape
            x, y = self._mixup(x.reshape(b, c * t, h, w), y)
            x = x.reshape(b, c, t, h, w)
        return self._loss(model(x).float(), y)

    def eval_batch(self, model: nn.Module, batch: Any, cfg: Any) -> dict[str, Tensor]:
        if batch is None:
            return {}
        x, y = batch
        if x.ndim == 6:  # (B, V, C, T, H, W): average the views' class probabilities
            b, v = x.shape[:2]
            probs = model(x.flatten(0, 1)).float().softmax(-1).view(b, v, -1).mean(1)
            logits = probs.clamp_min(1e-12).log()
        else:
            logits = model(x).float()
        sums = topk_sums(logits, y, ks=(1, 5), loss=F.cross_entropy(logits, y, reduction="none"))
        return {**sums, **group_sums(logits.argmax(-1) == y, y, logits.shape[-1])}

    def _class_key(self, i: int) -> str:
        names = self._classes or []
        if i >= len(names):
            return f"{i:02d}"
        slug = "".join(c if c.isalnum() else "_" for c in names[i].split("(")[0].strip().lower())
        return f"{i:02d}_{slug}"

    def finalize(self, sums: dict[str, Tensor], cfg: Any) -> dict[str, float]:
        out = classification_finalize({k: v for k, v in sums.items() if not k.startswith("class_")})
        if "class_count" in sums:
            out["mean_class_acc"] = mean_group_accuracy(sums)
            if len(sums["class_count"]) <= 50:  # per-class numbers for small label sets (SSv2's 174: mean only)
                out.update({f"class_acc/{self._class_key(i)}": a for i, a in group_accuracy(sums).items()})
        return out
