"""``build_video_dataset(cfg.data, split)``: SSv2, Kinetics, a plain video list, or moving shapes."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .video import VideoClipDataset, read_kinetics_csv, read_ssv2_labels, read_ssv2_split, read_video_list

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
        from .synthetic.video import CLASSES, generate
        root = generate(cfg.get("root"), int(cfg.get("n_train", 1200)), int(cfg.get("n_val", 240)),
                        seed=int(cfg.get("gen_seed", 0)), size=int(cfg.get("frame_size", 32)),
                        num_frames=int(cfg.get("gen_frames", 8)))
        return read_video_list(root / f"{which}.csv"), list(CLASSES)
    if name == "ssv2":
        labels = read_ssv2_labels(_path(cfg, "labels_json"))
        items = read_ssv2_split(_path(cfg, f"{which}_json"), labels, _path(cfg, "video_dir"),
                                ext=str(cfg.get("ext", ".webm")))
        names = [k for k, _ in sorted(labels.items(), key=lambda kv: kv[1])]
        return items, names
    if name == "kinetics":
        items, names = read_kinetics_csv(_path(cfg, f"{which}_csv"), _path(cfg, "video_dir"),
                                         classes=cfg.get("classes"))
        return items, names
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
    return VideoClipDataset(
        items, n, train=train, sampling=str(cfg.get("sampling", "tsn")), num_frames=int(cfg.get("num_frames", 16)),
        interval=int(cfg.get("interval", 4)), img_size=int(cfg.get("img_size", 224)),
        short_side=cfg.get("short_side"), scale=tuple(cfg.get("scale") or (0.08, 1.0)),
        ratio=tuple(cfg.get("ratio") or (0.75, 1.3333)), hflip=float(cfg.get("hflip", 0.0) or 0.0),
        auto_augment=cfg.get("auto_augment"), test_clips=int(cfg.get("test_clips", 1)),
        test_crops=int(cfg.get("test_crops", 1)), on_error=str(cfg.get("on_error", "raise")),
        min_frames=int(cfg.get("min_frames", 1)), backend=str(cfg.get("backend", "auto")),
        classes=names, cache=bool(cfg.get("cache", False)))
