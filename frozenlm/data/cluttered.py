"""Cluttered Fashion-MNIST (offline, exact foreground masks): scored by ``frozenlm analyze``, trained on by
the task ``image_cluttered``. Items are ``(image in [0, 1], label, mask)``, see frozenlm.analysis.datasets."""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .image import FASHION_MNIST_ROOT, FashionMNIST
from .transforms import FASHION_MNIST_MEAN, FASHION_MNIST_STD

__all__ = ["CLUTTERS", "ClutteredFashionMNIST", "NormalizedClassification", "cluttered_classification_dataset"]


def _resize(a: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(a.astype(np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


CLUTTERS = ("standard", "matched")


class ClutteredFashionMNIST(Dataset):
    """Fashion-MNIST items pasted at a random position and scale on a cluttered background.

    Background = a random sinusoidal texture + Gaussian noise + ``n_distractors`` fragments
    (random crops of about a third of other items, at lower contrast). The item is pasted
    on top: every pixel where the resized item exceeds ``item_threshold`` takes the item's value,
    and exactly those pixels form the mask. Item ``i`` is a pure function of (seed, i), so the
    dataset is reproducible and needs no storage. ``img_size``/``in_chans`` match the model
    (channels are copies of the grey image). The label is the item's Fashion-MNIST class.

    clutter: "standard" (the item is on average brighter than the clutter, so pixel brightness
             alone localises it well) or "matched" (distractors at the item's contrast, more of
             them, a stronger texture and a random item contrast, so that brightness is not a
             shortcut; `frozenlm analyze` reports the brightness map's mIoU as a reference).
    source: (images uint8 (N, 28, 28), labels (N,)) to use instead of the Debian files.
    """

    def __init__(self, n: int = 1000, seed: int = 0, img_size: int = 56, in_chans: int = 1,
                 train: bool = False, scale: tuple[float, float] = (0.45, 0.75), n_distractors: int = 3,
                 item_threshold: float = 0.15, root: str | os.PathLike | None = None,
                 source: tuple[np.ndarray, np.ndarray] | None = None, clutter: str = "standard") -> None:
        if clutter not in CLUTTERS:
            raise ValueError(f"clutter must be one of {CLUTTERS}, got {clutter!r}")
        self.clutter = clutter
        if source is None:
            fm = FashionMNIST(root or FASHION_MNIST_ROOT, train=train)
            source = (fm.data.numpy(), fm.targets.numpy())
        self.images = np.asarray(source[0], dtype=np.uint8)
        self.labels = np.asarray(source[1], dtype=np.int64)
        self.n, self.seed = int(n), int(seed)
        self.img_size, self.in_chans = int(img_size), int(in_chans)
        self.scale, self.n_distractors, self.item_threshold = scale, int(n_distractors), float(item_threshold)
        self.classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
        self.num_classes = 10

    def __len__(self) -> int:
        return self.n

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        s = self.img_size
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
        theta = rng.uniform(0, np.pi)
        freq = rng.uniform(2, 8)
        phase = rng.uniform(0, 2 * np.pi)
        tex = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
        matched = self.clutter == "matched"
        amp = rng.uniform(0.3, 0.6) if matched else rng.uniform(0.1, 0.35)
        bg = amp * tex + rng.normal(0, rng.uniform(0.03, 0.12), (s, s))
        for _ in range(2 * self.n_distractors if matched else self.n_distractors):
            other = self.images[rng.integers(len(self.images))].astype(np.float32) / 255.0
            c = int(rng.integers(7, 13))  # fragment: a crop of about a third of an item
            y0, x0 = (int(v) for v in rng.integers(0, 28 - c, 2))
            frag = _resize(other[y0:y0 + c, x0:x0 + c], max(2, int(c * s / 28 * rng.uniform(0.6, 1.0))))
            fs = frag.shape[0]
            py, px = (int(v) for v in rng.integers(0, s - fs + 1, 2))
            region = bg[py:py + fs, px:px + fs]
            contrast = rng.uniform(0.7, 1.0) if matched else rng.uniform(0.4, 0.7)
            bg[py:py + fs, px:px + fs] = np.maximum(region, contrast * frag)
        return np.clip(bg, 0.0, 1.0)

    def sample(self, i: int) -> tuple[np.ndarray, int, np.ndarray, dict]:
        """(image (H, W) float in [0, 1], label, mask (H, W) uint8, placement info) for item i."""
        if not 0 <= i < self.n:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, i])
        k = int(rng.integers(len(self.images)))
        s = self.img_size
        bg = self._background(rng)
        size = max(4, int(round(s * rng.uniform(*self.scale))))
        item = _resize(self.images[k].astype(np.float32) / 255.0, size).clip(0, 1)
        item_mask = item > self.item_threshold  # the mask is fixed before any contrast change
        if self.clutter == "matched":
            item = item * rng.uniform(0.7, 1.0)
        y, x = (int(v) for v in rng.integers(0, s - size + 1, 2))
        img = bg.copy()
        mask = np.zeros((s, s), dtype=np.uint8)
        img[y:y + size, x:x + size][item_mask] = item[item_mask]
        mask[y:y + size, x:x + size] = item_mask
        return img, int(self.labels[k]), mask, {"index": k, "y": y, "x": x, "size": size, "item": item,
                                                "item_mask": item_mask}

    def __getitem__(self, i: int) -> tuple[Tensor, int, Tensor]:
        img, label, mask, _ = self.sample(i)
        x = torch.from_numpy(img.astype(np.float32)).unsqueeze(0).repeat(self.in_chans, 1, 1)
        return x, label, torch.from_numpy(mask)


class NormalizedClassification(Dataset):
    """(image, label, mask) dataset -> (normalised image, label) for the classification engine."""

    def __init__(self, ds: Dataset, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.ds = ds
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.classes = list(getattr(ds, "classes", []))
        self.num_classes = int(getattr(ds, "num_classes", len(self.classes)))

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x, y, _ = self.ds[i]
        return (x - self.mean) / self.std, y


def cluttered_classification_dataset(cfg_data: dict, split: str) -> NormalizedClassification:
    """The cluttered dataset for training/evaluating a classifier (task ``image_cluttered``).

    Train items come from Fashion-MNIST's train split and val items from its test split, with
    different seeds; ``frozenlm analyze`` uses the test split too, but seed ``cluttered_seed`` of
    analysis defaults to 0 while val uses ``cluttered_seed + 1``. Keys of ``data:``: img_size,
    in_chans, subset_train/subset_val (sizes; defaults 60000/10000), cluttered_seed (0), root,
    clutter (standard | matched).
    """
    train = split == "train"
    in_chans = int(cfg_data.get("in_chans") or 1)
    n = cfg_data.get("subset_train" if train else "subset_val") or (60000 if train else 10000)
    seed = int(cfg_data.get("cluttered_seed") or 0) + (1000 if train else 1)
    ds = ClutteredFashionMNIST(n=int(n), seed=seed, img_size=int(cfg_data.get("img_size") or 28),
                               in_chans=in_chans, train=train, root=cfg_data.get("root"),
                               clutter=cfg_data.get("clutter") or "standard")
    mean = tuple(cfg_data.get("mean") or FASHION_MNIST_MEAN * in_chans)
    std = tuple(cfg_data.get("std") or FASHION_MNIST_STD * in_chans)
    return NormalizedClassification(ds, mean, std)
