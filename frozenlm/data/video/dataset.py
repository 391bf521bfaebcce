"""``VideoClipDataset`` ((path, label) items -> normalised clips) and ``build_video_dataset`` from a config."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ..errors import DropSkipped, FilePolicy
from .decode import decode_frames
from .files import drop_missing, split_video_dir
from .labels import read_kinetics_csv, read_ssv2_labels, read_ssv2_split, read_video_list
from .transforms import resize_short, same_randaugment, dense_indices, spatial_crops, tsn_indices


class VideoClipDataset(Dataset):
    """(video path, label) items -> (clip, label); clip (C, T, H, W) float, normalised.

    Evaluation with ``test_clips`` x ``test_crops`` > 1 returns (V, C, T, H, W). Training with
    ``num_sample`` S > 1 (VideoMAE's repeated sampling) returns (S, C, T, H, W): the same frames,
    decoded once, under S independent augmentations; :data:`repeated_sample_collate` flattens them
    into the batch, video by video. ``on_error``
    (``data.on_error``, see :mod:`frozenlm.data.errors`): "raise" (default) stops on a bad file;
    "skip" logs and counts it and returns None, which :func:`skip_none_collate` drops from the
    batch, so no video ever gets another's label.
    """

    def __init__(self, items: Sequence[tuple[Path, int]], num_classes: int, *, train: bool,
                 sampling: str = "tsn", num_frames: int = 16, interval: int = 4, img_size: int = 224,
                 short_side: int | None = None, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (0.75, 1.3333), hflip: float = 0.0, auto_augment: str | None = None,
                 test_clips: int = 1, test_crops: int = 1, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                 std: Sequence[float] = IMAGENET_DEFAULT_STD, on_error: str = "raise", min_frames: int = 1,
                 backend: str = "auto", classes: Sequence[str] | None = None, cache: bool = False,
                 num_sample: int = 1, seek: bool = True) -> None:
        if sampling not in ("tsn", "dense"):
            raise ValueError(f"data.sampling must be tsn or dense, got {sampling!r}")
        if int(num_sample) < 1:
            raise ValueError(f"data.num_sample must be >= 1, got {num_sample}")
        self.policy = FilePolicy(on_error)
        bad = [(str(p), y) for p, y in items if not 0 <= int(y) < num_classes]
        if bad:
            raise ValueError(f"labels out of range 0..{num_classes - 1}: {bad[:3]} (check data.num_classes)")
        self.items = [(Path(p), int(y)) for p, y in items]
        self.num_classes, self.train, self.sampling = num_classes, train, sampling
        self.num_frames, self.interval, self.img_size = num_frames, interval, img_size
        self.short_side = short_side or img_size
        self.hflip, self.auto_augment = hflip, auto_augment
        # One box for every frame of the clip (v2 treats (T, C, H, W) as a batch of one image's frames),
        # drawn from torch's RNG, which engine.data.SeededDataset seeds per sample.
        self.crop = (v2.Resize((img_size, img_size), antialias=True) if tuple(scale) == (1.0, 1.0) else
                     v2.RandomResizedCrop(img_size, tuple(scale), tuple(ratio), antialias=True))
        self.test_clips, self.test_crops = (1, 1) if train else (test_clips, test_crops)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.on_error, self.min_frames, self.backend, self.seek = on_error, min_frames, backend, seek
        # VideoMAE's num_sample (repeated sampling): clips per training video, each its own augmentation.
        self.num_sample = int(num_sample) if train else 1
        self.classes = list(classes) if classes is not None else [str(i) for i in range(num_classes)]
        # cache: keep every decoded video in memory after its first read (tiny offline sets only).
        self.cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def skipped(self) -> list[str]:
        """Files skipped so far in this process (``on_error=skip``)."""
        return self.policy.skipped

    @property
    def targets(self) -> list[int]:
        """Labels in item order."""
        return [y for _, y in self.items]

    def _indices(self, n: int, rng: random.Random, view: int) -> list[int]:
        if self.sampling == "tsn":
            return tsn_indices(n, self.num_frames, self.train, rng, view, self.test_clips)
        return dense_indices(n, self.num_frames, self.interval, self.train, rng, view, self.test_clips)

    def load_views(self, path: Path, rng: random.Random, key: int | None = None) -> Tensor:
        """Every view of one video: (V, C, T, H, W) with V = test_clips x test_crops at test time,
        V = num_sample in training (one frame draw, num_sample augmentations, as VideoMAE does)."""
        plan: list[list[int]] = []

        def pick(n: int) -> list[int]:
            plan[:] = [self._indices(n, rng, v) for v in range(self.test_clips)]
            return sorted({i for idx in plan for i in idx})

        if self.cache is not None and key is not None:
            if key not in self.cache:
                self.cache[key] = decode_frames(path, None, self.backend, self.min_frames)
            frames = self.cache[key]
            where = {i: i for i in pick(len(frames))}
        else:
            frames = decode_frames(path, pick, self.backend, self.min_frames, seek=self.seek)
            where = {i: k for k, i in enumerate(sorted({i for idx in plan for i in idx}))}
        views = []
        for idx in plan:
            raw = frames[[where[i] for i in idx]]
            for _ in range(self.num_sample):
                views.extend(self._augment(raw, rng))
        return torch.stack(views)

    def _augment(self, clip: np.ndarray, rng: random.Random) -> list[Tensor]:
        """(T, H, W, 3) uint8 -> normalised (C, T, H, W) views: one random training view, or the test crops."""
        if self.train and self.auto_augment:
            clip = same_randaugment(clip, self.auto_augment, rng)
        t = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2).float().div_(255)
        if self.train:
            t = self.crop(t)
            if self.hflip and rng.random() < self.hflip:
                t = t.flip(-1)
            crops = [t]
        else:
            crops = spatial_crops(resize_short(t, self.short_side), self.img_size, self.test_crops)
        return [((c - self.mean) / self.std).permute(1, 0, 2, 3) for c in crops]  # (C, T, H, W)

    def __getitem__(self, i: int) -> tuple[Tensor, int] | None:
        path, label = self.items[i]
        # The engine seeds `random` per sample (engine.data.SeededDataset): augmentation is reproducible.
        rng = random.Random(random.getrandbits(64))
        views = self.policy.call(lambda: self.load_views(path, rng, i), f"item {i}, label {label}")
        if views is None:
            return None
        return (views[0] if views.shape[0] == 1 else views), label


#: Default collate after dropping the None items of skipped (undecodable) videos; a batch of only
#: skipped videos is None, which the video task accepts.
skip_none_collate = DropSkipped(allow_empty=True)


def flatten_samples(batch: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    """VideoMAE's ``multiple_samples_collate``: items of (S, C, T, H, W) clips of one video and its
    label -> (B * S, C, T, H, W) clips and (B * S,) labels, video by video (v0 s0, v0 s1, v1 s0, ...)."""
    clips = torch.cat([x if x.ndim == 5 else x.unsqueeze(0) for x, _ in batch])
    labels = torch.tensor([int(y) for x, y in batch for _ in range(x.shape[0] if x.ndim == 5 else 1)])
    return clips, labels


#: Training collate under ``data.num_sample`` > 1: drops skipped videos, then :func:`flatten_samples`.
repeated_sample_collate = DropSkipped(flatten_samples, allow_empty=True)


VIDEO_DATASETS = ("moving_shapes", "ssv2", "kinetics", "list")
_SPLIT_KEYS = {"train": "train", "val": "val", "test": "val"}


def _need(cfg: Mapping[str, Any], key: str) -> Any:
    value = cfg.get(key)
    if value in (None, ""):
        raise ValueError(f"data.{key} must be set for data.name={cfg.get('name')!r} (see docs/video.md)")
    return value


def _path(cfg: Mapping[str, Any], key: str) -> Path:
    p = Path(str(_need(cfg, key))).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"data.{key} = {p} does not exist")
    return p


def video_items(cfg: Mapping[str, Any], split: str) -> tuple[list[tuple[Path, int]], list[str] | None]:
    """(items, class names or None) for one split of the configured dataset."""
    name = cfg.get("name")
    which = _SPLIT_KEYS.get(split)
    if which is None:
        raise ValueError(f"unknown split {split!r}; video datasets have train and val")
    if name == "moving_shapes":
        from ..synthetic.video import CLASSES, generate
        root = generate(cfg.get("root"), int(cfg.get("n_train", 1200)), int(cfg.get("n_val", 240)),
                        seed=int(cfg.get("gen_seed", 0)), size=int(cfg.get("frame_size", 32)),
                        num_frames=int(cfg.get("gen_frames", 8)))
        return read_video_list(root / f"{which}.csv"), list(CLASSES)
    if name == "ssv2":
        labels = read_ssv2_labels(_path(cfg, "labels_json"))
        folder = split_video_dir(cfg.get("video_dir"), cfg.get(f"{which}_video_dir"), which)
        items = read_ssv2_split(_path(cfg, f"{which}_json"), labels, folder, ext=str(cfg.get("ext") or ".webm"))
        names = [k for k, _ in sorted(labels.items(), key=lambda kv: kv[1])]
        return items, names
    if name == "kinetics":
        folder = split_video_dir(cfg.get("video_dir"), cfg.get(f"{which}_video_dir"), which)
        return read_kinetics_csv(_path(cfg, f"{which}_csv"), folder, classes=cfg.get("classes"),
                                 layout=str(cfg.get("layout") or "auto"), ext=str(cfg.get("ext") or ".mp4"))
    if name == "list":
        root = cfg.get("root")
        return read_video_list(_path(cfg, f"{which}_list"), root), None
    raise ValueError(f"data.name must be one of {VIDEO_DATASETS}, got {name!r}")


def build_video_dataset(cfg: Mapping[str, Any], split: str) -> VideoClipDataset:
    """The configured dataset for ``split`` with the ``data:`` section's sampling/augmentation keys."""
    items, names = video_items(cfg, split)
    n = int(_need(cfg, "num_classes"))
    if names is not None and len(names) != n:
        raise ValueError(f"data {cfg.get('name')!r} has {len(names)} classes but data.num_classes is {n}")
    train = split == "train"
    policy = FilePolicy(str(cfg.get("on_error", "raise")))
    if cfg.get("name") != "moving_shapes":
        which = _SPLIT_KEYS[split]
        keys = {"ssv2": f"data.{which}_json / data.{which}_video_dir / data.video_dir / data.ext",
                "kinetics": f"data.{which}_csv / data.{which}_video_dir / data.video_dir / data.layout / data.ext",
                "list": f"data.{which}_list / data.root"}[str(cfg.get("name"))]
        items = drop_missing(items, policy, f"{cfg.get('name')} {split}", keys)
    ds = VideoClipDataset(
        items, n, train=train, sampling=str(cfg.get("sampling", "tsn")), num_frames=int(cfg.get("num_frames", 16)),
        interval=int(cfg.get("interval", 4)), img_size=int(cfg.get("img_size", 224)),
        short_side=cfg.get("short_side"), scale=tuple(cfg.get("scale") or (0.08, 1.0)),
        ratio=tuple(cfg.get("ratio") or (0.75, 1.3333)), hflip=float(cfg.get("hflip", 0.0) or 0.0),
        auto_augment=cfg.get("auto_augment"), test_clips=int(cfg.get("test_clips", 1)),
        test_crops=int(cfg.get("test_crops", 1)), on_error=str(cfg.get("on_error", "raise")),
        min_frames=int(cfg.get("min_frames", 1)), backend=str(cfg.get("backend", "auto")),
        classes=names, cache=bool(cfg.get("cache", False)), num_sample=int(cfg.get("num_sample") or 1),
        seek=bool(cfg.get("seek", True)))
    ds.policy.skipped.extend(policy.skipped)  # the missing videos dropped up front count as skipped
    return ds
