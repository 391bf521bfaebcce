"""Video clips for action recognition: decoding, frame sampling, label files, augmentation, dataset.

Decoding uses PyAV (decord when installed and asked for). Frame sampling follows VideoMAE:
TSN segments for Something-Something-v2 (one frame per equal segment), dense clips (``num_frames``
frames ``interval`` apart) for Kinetics. Test time uses several temporal views x spatial crops.
"""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .errors import DataFileError, DropSkipped, FilePolicy

__all__ = ["VideoDecodeError", "VideoTooShortError", "decode_frames", "tsn_indices", "dense_indices",
           "read_ssv2_labels", "read_ssv2_split", "read_video_list", "read_kinetics_csv",
           "VideoClipDataset", "skip_none_collate", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VideoDecodeError(DataFileError):
    """A video file cannot be opened or decoded (the message names the file)."""


class VideoTooShortError(VideoDecodeError):
    """A video has fewer frames than the loader's ``min_frames``."""


# ------------------------------------------------------------------------------------ decoding

def _has_decord() -> bool:
    import importlib.util
    return importlib.util.find_spec("decord") is not None


def decode_frames(path: str | Path, indices: Callable[[int], Sequence[int]] | Sequence[int] | None = None,
                  backend: str = "auto", min_frames: int = 1) -> np.ndarray:
    """Decode RGB frames (T, H, W, 3) uint8 from ``path``.

    ``indices`` is a list of frame numbers or a function of the video's frame count returning
    one (so sampling can depend on the length); None = every frame. ``backend``: "pyav",
    "decord" (optional package) or "auto" (decord if installed, else PyAV).
    """
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(f"video file not found: {path}", path)
    if backend == "auto":
        backend = "decord" if _has_decord() else "pyav"
    if backend == "decord":
        frames, _ = _decode_decord(path, indices, min_frames)
    elif backend == "pyav":
        frames, _ = _decode_pyav(path, indices, min_frames)
    else:
        raise ValueError(f"data.backend must be auto, pyav or decord, got {backend!r}")
    return frames


def _check_length(path: Path, n: int, min_frames: int) -> None:
    if n == 0:
        raise VideoDecodeError(f"{path}: no decodable video frames (empty or corrupt file)", path)
    if n < min_frames:
        raise VideoTooShortError(f"{path}: only {n} frames, fewer than data.min_frames={min_frames}; "
                                 f"remove it from the list or lower data.min_frames", path)


def _resolve(indices: Any, n: int, path: Path) -> list[int]:
    idx = list(range(n)) if indices is None else list(indices(n) if callable(indices) else indices)
    bad = [i for i in idx if not 0 <= int(i) < n]
    if bad:
        raise VideoDecodeError(f"{path}: frame indices {bad[:5]} out of range for a {n}-frame video", path)
    return [int(i) for i in idx]


def _decode_pyav(path: Path, indices: Any, min_frames: int) -> tuple[np.ndarray, int]:
    import av
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: has no video stream", path)
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            # Container frame counts are missing (webm) or wrong often enough: count while decoding.
            decoded = list(container.decode(stream))
    except VideoDecodeError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoDecodeError(f"{path}: cannot decode ({type(e).__name__}: {e})", path) from None
    _check_length(path, len(decoded), min_frames)
    idx = _resolve(indices, len(decoded), path)
    return np.stack([decoded[i].to_ndarray(format="rgb24") for i in idx]), len(decoded)


def _decode_decord(path: Path, indices: Any, min_frames: int) -> tuple[np.ndarray, int]:
    import decord  # optional dependency
    try:
        vr = decord.VideoReader(str(path), num_threads=1)
    except Exception as e:  # noqa: BLE001 - decord raises its own DECORDError
        raise VideoDecodeError(f"{path}: cannot decode ({type(e).__name__}: {e})", path) from None
    _check_length(path, len(vr), min_frames)
    idx = _resolve(indices, len(vr), path)
    return vr.get_batch(idx).asnumpy(), len(vr)


# ------------------------------------------------------------------------------------ sampling

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


# --------------------------------------------------------------------------------- label files

def read_ssv2_labels(path: str | Path) -> dict[str, int]:
    """``something-something-v2-labels.json``: {"Approaching something with your camera": "0", ...}."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the SSv2 label json ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a {{template: index}} object, got {type(raw).__name__}")
    labels = {str(k): int(v) for k, v in raw.items()}
    if sorted(labels.values()) != list(range(len(labels))):
        raise ValueError(f"{path}: class indices are not 0..{len(labels) - 1}")
    return labels


def read_ssv2_split(path: str | Path, labels: dict[str, int], video_dir: str | Path,
                    ext: str = ".webm") -> list[tuple[Path, int]]:
    """``something-something-v2-{train,validation}.json`` -> [(video_dir/<id><ext>, label)].

    The label is the entry's ``template`` with its brackets removed, looked up in ``labels``.
    """
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the SSv2 split json ({e})") from None
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "id" not in e or "template" not in e:
            raise ValueError(f"{path}: entry {i} lacks 'id'/'template' (is this the test split, which has no labels?)")
        name = e["template"].replace("[", "").replace("]", "")
        if name not in labels:
            raise ValueError(f"{path}: entry {i} (id {e['id']}) has template {name!r}, not in the label json")
        out.append((Path(video_dir) / f"{e['id']}{ext}", labels[name]))
    return out


def read_video_list(path: str | Path, root: str | Path | None = None) -> list[tuple[Path, int]]:
    """VideoMAE's list files: one ``<path> <label>`` per line (space, comma or tab separated);
    relative paths are taken relative to ``root`` (default: the list file's folder)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video list not found: {path}")
    base = Path(root) if root is not None else path.parent
    out = []
    for ln, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.replace(",", " ").replace("\t", " ").split()
        if len(parts) < 2 or not parts[-1].lstrip("-").isdigit():
            raise ValueError(f"{path}:{ln}: expected '<video path> <integer label>', got {line!r}")
        p = Path(" ".join(parts[:-1]))
        out.append((p if p.is_absolute() else base / p, int(parts[-1])))
    return out


def read_kinetics_csv(path: str | Path, video_dir: str | Path,
                      classes: Sequence[str] | None = None) -> tuple[list[tuple[Path, int]], list[str]]:
    """The official Kinetics csv (``label,youtube_id,time_start,time_end,split``) -> items, classes.

    Files are expected at ``video_dir/<youtube_id>_<start:06d>_<end:06d>.mp4`` (the naming of the
    common download scripts); classes are the sorted label names unless ``classes`` is given.
    """
    path = Path(path)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"label", "youtube_id", "time_start", "time_end"}
    if not rows or not need <= set(rows[0]):
        raise ValueError(f"{path}: expected a header with columns {sorted(need)}")
    names = list(classes) if classes is not None else sorted({r["label"] for r in rows})
    index = {c: i for i, c in enumerate(names)}
    out = []
    for ln, r in enumerate(rows, 2):
        if r["label"] not in index:
            raise ValueError(f"{path}:{ln}: label {r['label']!r} is not among the {len(names)} classes")
        stem = f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}"
        out.append((Path(video_dir) / f"{stem}.mp4", index[r["label"]]))
    return out, names


# ------------------------------------------------------------------------------- augmentation

def _resize_short(clip: Tensor, short: int) -> Tensor:
    """(T, C, H, W) float -> shorter side == ``short``."""
    h, w = clip.shape[-2:]
    if min(h, w) == short:
        return clip
    s = short / min(h, w)
    size = (max(short, round(h * s)), max(short, round(w * s)))
    return F.interpolate(clip, size=size, mode="bilinear", align_corners=False, antialias=True)


def _random_resized_crop(clip: Tensor, size: int, scale: Sequence[float], ratio: Sequence[float],
                         rng: random.Random) -> Tensor:
    """One crop box for the whole clip (torchvision's RandomResizedCrop rule), resized to size x size."""
    h, w = clip.shape[-2:]
    area = h * w
    for _ in range(10):
        a = area * rng.uniform(*scale)
        r = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        cw, ch = int(round(np.sqrt(a * r))), int(round(np.sqrt(a / r)))
        if 0 < cw <= w and 0 < ch <= h:
            i, j = rng.randint(0, h - ch), rng.randint(0, w - cw)
            break
    else:
        ch, cw = min(h, w), min(h, w)
        i, j = (h - ch) // 2, (w - cw) // 2
    crop = clip[..., i:i + ch, j:j + cw]
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


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


def _same_randaugment(frames: np.ndarray, config: str, rng: random.Random) -> np.ndarray:
    """timm's RandAugment with the SAME ops and magnitudes on every frame of a clip (VideoMAE)."""
    from PIL import Image
    from timm.data.auto_augment import rand_augment_transform
    ra = rand_augment_transform(config, {"translate_const": int(frames.shape[1] * 0.45),
                                         "img_mean": tuple(int(255 * m) for m in IMAGENET_MEAN)})
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


# ------------------------------------------------------------------------------------ dataset

class VideoClipDataset(Dataset):
    """(video path, label) items -> (clip, label); clip (C, T, H, W) float, normalised.

    Evaluation with ``test_clips`` x ``test_crops`` > 1 returns (V, C, T, H, W). ``on_error``
    (``data.on_error``, see :mod:`frozenlm.data.errors`): "raise" (default) stops on a bad file;
    "skip" logs and counts it and returns None, which :func:`skip_none_collate` drops from the
    batch, so no video ever gets another's label.
    """

    def __init__(self, items: Sequence[tuple[Path, int]], num_classes: int, *, train: bool,
                 sampling: str = "tsn", num_frames: int = 16, interval: int = 4, img_size: int = 224,
                 short_side: int | None = None, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (0.75, 1.3333), hflip: float = 0.0, auto_augment: str | None = None,
                 test_clips: int = 1, test_crops: int = 1, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, on_error: str = "raise", min_frames: int = 1,
                 backend: str = "auto", classes: Sequence[str] | None = None, cache: bool = False) -> None:
        if sampling not in ("tsn", "dense"):
            raise ValueError(f"data.sampling must be tsn or dense, got {sampling!r}")
        self.policy = FilePolicy(on_error)
        bad = [(str(p), y) for p, y in items if not 0 <= int(y) < num_classes]
        if bad:
            raise ValueError(f"labels out of range 0..{num_classes - 1}: {bad[:3]} (check data.num_classes)")
        self.items = [(Path(p), int(y)) for p, y in items]
        self.num_classes, self.train, self.sampling = num_classes, train, sampling
        self.num_frames, self.interval, self.img_size = num_frames, interval, img_size
        self.short_side = short_side or img_size
        self.scale, self.ratio, self.hflip, self.auto_augment = tuple(scale), tuple(ratio), hflip, auto_augment
        self.test_clips, self.test_crops = (1, 1) if train else (test_clips, test_crops)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.on_error, self.min_frames, self.backend = on_error, min_frames, backend
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
        """Every view of one video: (V, C, T, H, W) with V = test_clips x test_crops (1 in training)."""
        all_idx: list[list[int]] = []

        def pick(n: int) -> list[int]:
            all_idx.extend(self._indices(n, rng, v) for v in range(self.test_clips))
            return sorted({i for idx in all_idx for i in idx})

        if self.cache is not None and key is not None:
            if key not in self.cache:
                self.cache[key] = decode_frames(path, None, self.backend, self.min_frames)
            frames = self.cache[key]
            where = {i: i for i in pick(len(frames))}
        else:
            frames = decode_frames(path, pick, self.backend, self.min_frames)
            where = {i: k for k, i in enumerate(sorted({i for idx in all_idx for i in idx}))}
        views = []
        for idx in all_idx:
            clip = frames[[where[i] for i in idx]]
            if self.train and self.auto_augment:
                clip = _same_randaugment(clip, self.auto_augment, rng)
            t = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2).float().div_(255)
            if self.train:
                t = _random_resized_crop(t, self.img_size, self.scale, self.ratio, rng) \
                    if tuple(self.scale) != (1.0, 1.0) else _resize_exact(t, self.img_size)
                if self.hflip and rng.random() < self.hflip:
                    t = t.flip(-1)
                crops = [t]
            else:
                crops = spatial_crops(_resize_short(t, self.short_side), self.img_size, self.test_crops)
            for c in crops:
                views.append(((c - self.mean) / self.std).permute(1, 0, 2, 3))  # (C, T, H, W)
        return torch.stack(views)

    def __getitem__(self, i: int) -> tuple[Tensor, int] | None:
        path, label = self.items[i]
        # The engine seeds `random` per sample (engine.data.SeededDataset): augmentation is reproducible.
        rng = random.Random(random.getrandbits(64))
        views = self.policy.call(lambda: self.load_views(path, rng, i), f"item {i}, label {label}")
        if views is None:
            return None
        return (views[0] if views.shape[0] == 1 else views), label


def _resize_exact(clip: Tensor, size: int) -> Tensor:
    if tuple(clip.shape[-2:]) == (size, size):
        return clip
    return F.interpolate(clip, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


#: Default collate after dropping the None items of skipped (undecodable) videos; a batch of only
#: skipped videos is None, which the video task accepts.
skip_none_collate = DropSkipped(allow_empty=True)
