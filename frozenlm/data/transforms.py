"""Image transforms, mixup/cutmix and the matching classification loss.

ImageNet-family data uses timm's ``create_transform`` (DeiT recipe by default); small
grayscale images (Fashion-MNIST) get a light crop/flip pipeline.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torchvision import transforms as T

FASHION_MNIST_MEAN: tuple[float, ...] = (0.2860,)
FASHION_MNIST_STD: tuple[float, ...] = (0.3530,)


def _data_section(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    # Callers may pass the whole config or just its data: section.
    return cfg.get("data", cfg) if isinstance(cfg.get("data", None), Mapping) else cfg


def _mean_std(cfg: Mapping[str, Any], default_mean: tuple, default_std: tuple, in_chans: int
              ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = tuple(cfg.get("mean") or default_mean)
    std = tuple(cfg.get("std") or default_std)
    # A single-channel statistic is broadcast when the image is expanded to 3 channels.
    if len(mean) == 1 and in_chans == 3:
        mean, std = mean * 3, std * 3
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f"data.mean/std have {len(mean)}/{len(std)} values, data.in_chans is {in_chans}")
    return mean, std


class ConvertMode:
    """Convert a PIL image to ``mode`` (picklable, unlike a lambda, for spawned workers)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, img):
        return img.convert(self.mode)

    def __repr__(self) -> str:
        return f"ConvertMode({self.mode!r})"


class ToChannels:
    """Repeat a 1-channel tensor image to ``n`` channels (no-op when it already has ``n``)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == self.n:
            return x
        if x.shape[0] == 1:
            return x.expand(self.n, *x.shape[1:]).contiguous()
        if self.n == 1:  # channels are identical copies of a grey image here
            return x[:1]
        raise ValueError(f"cannot convert {x.shape[0]} channels to {self.n}")

    def __repr__(self) -> str:
        return f"ToChannels({self.n})"


class TensorSmallTransform:
    """uint8 (1, H, W) tensor -> padded random crop -> float, channels, normalise; no PIL round trip.

    Used when only crop/flip are asked for: about 10x faster than the PIL pipeline, which matters
    on 2-core machines where data workers compete with the model for the CPU.
    """

    accepts_tensor = True

    def __init__(self, pad: int, hflip: float, in_chans: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.pad, self.hflip, self.in_chans = pad, hflip, in_chans
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255.0)
        if self.pad:
            h, w = x.shape[-2:]
            x = torch.nn.functional.pad(x, (self.pad,) * 4)
            i, j = (int(v) for v in torch.randint(0, 2 * self.pad + 1, (2,)))
            x = x[..., i:i + h, j:j + w]
        if self.hflip > 0 and float(torch.rand(())) < self.hflip:
            x = x.flip(-1)
        x = x.expand(self.in_chans, -1, -1)
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        return f"TensorSmallTransform(pad={self.pad}, hflip={self.hflip}, in_chans={self.in_chans})"


def small_image_transform(cfg: Mapping[str, Any], train: bool, native_size: int = 28) -> Callable:
    """Transform for small grayscale PIL images (Fashion-MNIST) -> normalized float tensor.

    Keys: ``img_size`` (resize target; default native), ``in_chans`` (1 or 3), ``crop_padding``
    (train random-crop padding, default 2, 0 = off), ``hflip`` (train flip prob., default 0),
    ``auto_augment`` (timm RandAugment string, train only), ``reprob`` (RandomErasing, train
    only), ``mean``/``std``.
    """
    cfg = _data_section(cfg)
    img_size = int(cfg.get("img_size") or native_size)
    in_chans = int(cfg.get("in_chans") or 1)
    mean, std = _mean_std(cfg, FASHION_MNIST_MEAN, FASHION_MNIST_STD, in_chans)
    pad = int(cfg.get("crop_padding", 2) or 0) if train else 0
    hflip = float(cfg.get("hflip", 0.0) or 0.0) if train else 0.0
    reprob = float(cfg.get("reprob", 0.0) or 0.0) if train else 0.0
    if img_size == native_size and not (train and cfg.get("auto_augment")) and reprob == 0:
        return TensorSmallTransform(pad, hflip, in_chans, mean, std)
    ops: list[Callable] = []
    if train:
        if pad:
            ops.append(T.RandomCrop(native_size, padding=pad))
        if hflip > 0:
            ops.append(T.RandomHorizontalFlip(hflip))
    if img_size != native_size:
        ops.append(T.Resize(img_size, interpolation=T.InterpolationMode.BICUBIC))
    aa = cfg.get("auto_augment") if train else None
    if aa:
        from timm.data.auto_augment import rand_augment_transform

        # timm's RandAugment ops expect RGB fill colours; run it in RGB, then return to L.
        ops += [ConvertMode("RGB"),
                rand_augment_transform(aa, {"translate_const": int(img_size * 0.45), "img_mean": (128, 128, 128)}),
                ConvertMode("L")]
    ops += [T.ToTensor(), ToChannels(in_chans), T.Normalize(mean, std)]
    if reprob > 0:
        from timm.data.random_erasing import RandomErasing

        ops.append(RandomErasing(reprob, mode=cfg.get("remode", "pixel"), max_count=int(cfg.get("recount", 1)),
                                 device="cpu"))
    return T.Compose(ops)


def imagenet_transform(cfg: Mapping[str, Any], train: bool) -> Callable:
    """timm ``create_transform`` with the keys of the data section (DeiT defaults).

    Keys: ``img_size`` (224), ``in_chans`` (3), ``auto_augment`` ('rand-m9-mstd0.5-inc1'),
    ``reprob`` (0.25), ``remode`` ('pixel'), ``recount`` (1), ``color_jitter`` (0.4),
    ``interpolation`` ('bicubic'), ``crop_pct`` (0.875: resize 256 / crop 224), ``hflip`` (0.5),
    ``scale`` ([0.08, 1.0]), ``mean``/``std`` (ImageNet).  Missing keys take the defaults;
    explicit null/0 turns an augmentation off.
    """
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

    cfg = _data_section(cfg)
    in_chans = int(cfg.get("in_chans") or 3)
    if in_chans not in (1, 3):
        raise ValueError(f"data.in_chans must be 1 or 3, got {in_chans}")
    # 1-channel models: grey image replicated to RGB, timm pipeline, keep channel 0.  The
    # grey statistics are the mean of ImageNet's RGB ones unless data.mean/std say otherwise.
    mean, std = _mean_std(cfg, IMAGENET_DEFAULT_MEAN if in_chans == 3 else (0.449,),
                          IMAGENET_DEFAULT_STD if in_chans == 3 else (0.226,), in_chans)
    mean3, std3 = (mean, std) if in_chans == 3 else (mean * 3, std * 3)
    img_size = int(cfg.get("img_size") or 224)
    interp = cfg.get("interpolation") or "bicubic"
    if train:
        scale = cfg.get("scale")
        tf = create_transform(
            input_size=img_size, is_training=True,
            auto_augment=cfg.get("auto_augment", "rand-m9-mstd0.5-inc1") or None,
            color_jitter=float(cfg.get("color_jitter", 0.4) or 0.0),
            interpolation=interp, re_prob=float(cfg.get("reprob", 0.25) or 0.0),
            re_mode=cfg.get("remode", "pixel"), re_count=int(cfg.get("recount", 1)),
            hflip=float(cfg.get("hflip", 0.5) or 0.0),
            scale=tuple(scale) if scale else None, mean=mean3, std=std3)
    else:
        tf = create_transform(input_size=img_size, is_training=False, interpolation=interp,
                              crop_pct=float(cfg.get("crop_pct") or 0.875), mean=mean3, std=std3)
    if in_chans == 1:
        tf = T.Compose([T.Grayscale(3), tf, ToChannels(1)])
    return tf


#: data keys read by build_mixup / build_loss (tasks that use them declare these).
MIXUP_KEYS = ("mixup", "cutmix", "cutmix_minmax", "mixup_prob", "mixup_switch_prob", "mixup_mode", "smoothing")


def build_mixup(cfg: Mapping[str, Any], num_classes: int):
    """``timm.data.Mixup`` when ``mixup`` or ``cutmix`` (alphas) > 0, else ``None``.

    Keys: ``mixup`` (alpha), ``cutmix`` (alpha), ``cutmix_minmax``, ``mixup_prob`` (1.0),
    ``mixup_switch_prob`` (0.5), ``mixup_mode`` ('batch'), ``smoothing`` (folded into the
    soft targets).  The training batch size must be even.
    """
    from timm.data import Mixup

    cfg = _data_section(cfg)
    mixup = float(cfg.get("mixup", 0.0) or 0.0)
    cutmix = float(cfg.get("cutmix", 0.0) or 0.0)
    minmax = cfg.get("cutmix_minmax")
    if mixup <= 0 and cutmix <= 0 and minmax is None:
        return None
    return Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, cutmix_minmax=minmax,
                 prob=float(cfg.get("mixup_prob", 1.0)), switch_prob=float(cfg.get("mixup_switch_prob", 0.5)),
                 mode=cfg.get("mixup_mode", "batch"), label_smoothing=float(cfg.get("smoothing", 0.0) or 0.0),
                 num_classes=int(num_classes))


def build_loss(cfg: Mapping[str, Any]) -> nn.Module:
    """Training loss matching :func:`build_mixup`.

    Mixup/CutMix on -> ``SoftTargetCrossEntropy`` (smoothing is already in the targets);
    else ``smoothing`` > 0 -> ``LabelSmoothingCrossEntropy``; else ``nn.CrossEntropyLoss``.
    """
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    cfg = _data_section(cfg)
    mixup_on = (float(cfg.get("mixup", 0.0) or 0.0) > 0 or float(cfg.get("cutmix", 0.0) or 0.0) > 0
                or cfg.get("cutmix_minmax") is not None)
    if mixup_on:
        return SoftTargetCrossEntropy()
    smoothing = float(cfg.get("smoothing", 0.0) or 0.0)
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return nn.CrossEntropyLoss()
