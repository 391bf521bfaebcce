"""Datasets with foreground masks for the pseudo-mask evaluation: ImageNet-S here, the offline
cluttered Fashion-MNIST in :mod:`frozenlm.data.cluttered`.

Both return ``(image, label, mask)``: image a float tensor (C, H, W) in [0, 1] (NOT normalised:
the caller applies the model's mean/std), label an int, mask a uint8 tensor (H, W) with
0 = background, 1 = foreground, 255 = ignore (see miou.IGNORE).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..data.cluttered import ClutteredFashionMNIST
from .miou import IGNORE

IMAGE_EXTS = (".jpeg", ".jpg", ".png")


# ----------------------------------------------------------------------------- ImageNet-S

class ImageNetS(Dataset):
    """ImageNet-S(50) validation layout::

        root/validation/<wnid>/<name>.JPEG
        root/validation-segmentation/<wnid>/<name>.png

    Masks follow the ImageNet-S convention: an RGB PNG whose class id is R + 256 * G (a
    single-channel PNG is read as the id directly); 0 = background, 1000 = "other"/ambiguous
    region, which is ignored (neither foreground nor background), any other id = the object.
    Images and masks are resized to ``img_size`` x ``img_size`` without cropping (bicubic for the
    image, nearest for the mask) so that the token grid covers the whole annotation.
    The label is the index of the wnid folder in sorted order.
    """

    IGNORE_ID = 1000

    def __init__(self, root: str | os.PathLike, img_size: int = 224, in_chans: int = 3,
                 split: str = "validation", limit: int | None = None) -> None:
        self.root = Path(root)
        img_dir, seg_dir = self.root / split, self.root / f"{split}-segmentation"
        if not img_dir.is_dir() or not seg_dir.is_dir():
            raise FileNotFoundError(f"ImageNet-S layout not found under {str(self.root)!r}: expected "
                                    f"{split}/<wnid>/<image> and {split}-segmentation/<wnid>/<name>.png")
        self.classes = sorted(d.name for d in img_dir.iterdir() if d.is_dir())
        self.samples: list[tuple[Path, Path, int]] = []
        for ci, wnid in enumerate(self.classes):
            for p in sorted((img_dir / wnid).iterdir()):
                m = seg_dir / wnid / (p.stem + ".png")
                if p.suffix.lower() in IMAGE_EXTS and m.is_file():
                    self.samples.append((p, m, ci))
        if limit is not None:
            self.samples = self.samples[: int(limit)]
        if not self.samples:
            raise FileNotFoundError(f"no image/mask pairs found under {str(self.root)!r}")
        self.img_size, self.in_chans = int(img_size), int(in_chans)

    def __len__(self) -> int:
        return len(self.samples)

    @staticmethod
    def decode_mask(arr: np.ndarray) -> np.ndarray:
        """ImageNet-S PNG array -> uint8 mask (0 background, 1 object, 255 ignore)."""
        ids = arr[..., 1].astype(np.int64) * 256 + arr[..., 0] if arr.ndim == 3 else arr.astype(np.int64)
        out = (ids != 0).astype(np.uint8)
        out[ids == ImageNetS.IGNORE_ID] = IGNORE
        return out

    def __getitem__(self, i: int) -> tuple[Tensor, int, Tensor]:
        p, m, label = self.samples[i]
        s = self.img_size
        img = Image.open(p).convert("RGB" if self.in_chans == 3 else "L").resize((s, s), Image.BICUBIC)
        x = torch.from_numpy(np.array(img, dtype=np.float32) / 255.0)
        x = x.permute(2, 0, 1) if x.dim() == 3 else x.unsqueeze(0)
        mask = Image.fromarray(self.decode_mask(np.array(Image.open(m)))).resize((s, s), Image.NEAREST)
        return x, label, torch.from_numpy(np.array(mask))


def build_analysis_dataset(name: str, img_size: int, in_chans: int, n: int, seed: int = 0,
                           root: str | os.PathLike | None = None, train: bool = False,
                           clutter: str = "standard") -> Dataset:
    """`cluttered` (offline, exact masks; `clutter` standard|matched) or `imagenet_s` (needs `root`)."""
    if name == "cluttered":
        return ClutteredFashionMNIST(n=n, seed=seed, img_size=img_size, in_chans=in_chans, train=train, root=root,
                                     clutter=clutter)
    if name in ("imagenet_s", "imagenet-s", "imagenets"):
        if root is None:
            raise ValueError("data=imagenet_s needs root=<ImageNet-S50 folder>")
        return ImageNetS(root, img_size=img_size, in_chans=in_chans, limit=n)
    raise ValueError(f"unknown analysis dataset {name!r}; use cluttered or imagenet_s")
