"""Which frames a clip takes (TSN / dense sampling) and the spatial augmentation applied to all of its frames."""
from __future__ import annotations

import random

import numpy as np
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN
from torch import Tensor


def tsn_indices(n: int, num_segments: int, train: bool, rng: random.Random | None = None,
                view: int = 0, num_views: int = 1) -> list[int]:
    """TSN sampling (SSv2 in VideoMAE): split [0, n-1] into ``num_segments`` equal segments and
    take one frame per segment — a random one in training, else the frame at fraction
    (view + 0.5) / num_views of the segment (temporal view ``view`` of ``num_views``)."""
    if n < 1 or num_segments < 1:
        raise ValueError(f"need n >= 1 frames and num_segments >= 1, got {n}, {num_segments}")
    seg = (n - 1) / num_segments
    out = []
    for i in range(num_segments):
        start, end = int(round(seg * i)), int(round(seg * (i + 1)))
        if train:
            out.append((rng or random).randint(start, end))
        else:
            out.append(min(n - 1, int(seg * i + seg * (view + 0.5) / num_views)))
    return out


def dense_indices(n: int, num_frames: int, interval: int, train: bool, rng: random.Random | None = None,
                  view: int = 0, num_views: int = 1) -> list[int]:
    """Dense sampling (Kinetics): ``num_frames`` frames ``interval`` apart. Training: a random
    start; testing: ``num_views`` starts spread evenly over the video (the middle one when 1).
    A video shorter than the clip repeats its last frame."""
    if n < 1 or num_frames < 1 or interval < 1:
        raise ValueError(f"need n, num_frames, interval >= 1, got {n}, {num_frames}, {interval}")
    span = (num_frames - 1) * interval + 1
    room = max(0, n - span)
    if train:
        start = (rng or random).randint(0, room)
    else:
        start = int(round(room * (view + 0.5) / num_views))
    return [min(n - 1, start + i * interval) for i in range(num_frames)]


def resize_short(clip: Tensor, short: int) -> Tensor:
    """(T, C, H, W) float -> shorter side == ``short``."""
    h, w = clip.shape[-2:]
    if min(h, w) == short:
        return clip
    s = short / min(h, w)
    size = (max(short, round(h * s)), max(short, round(w * s)))
    return F.interpolate(clip, size=size, mode="bilinear", align_corners=False, antialias=True)


def spatial_crops(clip: Tensor, size: int, num_crops: int) -> list[Tensor]:
    """``num_crops`` size x size crops spread along the longer side (1 = centre; 3 = VideoMAE's
    left/centre/right or top/centre/bottom), centred along the shorter one. ``clip``: (T, C, H, W)."""
    if min(clip.shape[-2:]) < size:
        raise ValueError(f"clip {tuple(clip.shape[-2:])} is smaller than the crop size {size}")
    h, w = clip.shape[-2:]
    out = []
    for k in range(num_crops):
        frac = 0.5 if num_crops == 1 else k / (num_crops - 1)
        i, j = int(round((h - size) * (frac if h > w else 0.5))), int(round((w - size) * (frac if w >= h else 0.5)))
        out.append(clip[..., i:i + size, j:j + size])
    return out


def same_randaugment(frames: np.ndarray, config: str, rng: random.Random) -> np.ndarray:
    """timm's RandAugment with the SAME ops and magnitudes on every frame of a clip (VideoMAE)."""
    from PIL import Image
    from timm.data.auto_augment import rand_augment_transform
    ra = rand_augment_transform(config, {"translate_const": int(frames.shape[1] * 0.45),
                                         "img_mean": tuple(int(255 * m) for m in IMAGENET_DEFAULT_MEAN)})
    # RandAugment draws from numpy and `random`: replay one draw for every frame.
    seed = rng.getrandbits(32)
    out = []
    py, npst = random.getstate(), np.random.get_state()
    try:
        for f in frames:
            random.seed(seed)
            np.random.seed(seed)
            out.append(np.asarray(ra(Image.fromarray(f))))
    finally:
        random.setstate(py)
        np.random.set_state(npst)
    return np.stack(out)
