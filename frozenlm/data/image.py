"""Image-classification datasets and the ``build_image_dataset`` factory.

``data.name`` selects one of :data:`DATASET_NAMES`; the keys of the ``data:`` section are
documented in ``docs/data_image.md``.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .errors import FilePolicy, on_error_policy
from .folder import CheckedImageFolder, FlatLabelledFolder, class_folder_names, image_files
from .imagenet_release import VAL_IMAGE, is_wnid, read_val_labels
from .imagenet_variants import (
    ImageNetCConcat,
    WnidImageFolder,
    build_imagenet_subset,
    imagenet_c_datasets,
)
from .tarshards import TarShardDataset, find_shards
from .transforms import _data_section, imagenet_transform, small_image_transform

DATASET_NAMES: tuple[str, ...] = (
    "fashion_mnist", "imagefolder", "tarshards",
    "imagenet_a", "imagenet_r", "imagenet_sketch", "imagenet_c",
)
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FMNIST_FILES = {
    True: ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    False: ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}
_IDX_MAGIC = {1: 2049, 3: 2051}  # unsigned-byte IDX, by number of dimensions


# ----------------------------------------------------------------------------- Fashion-MNIST

def read_idx_gz(path: str | os.PathLike, ndim: int, expected_count: int | None = None) -> np.ndarray:
    """Read a gzip'd unsigned-byte IDX file (MNIST format) into a uint8 array.

    Checks the magic number, the header dimensions against the payload length and, when
    given, the item count; every failure names the file.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: not a readable gzip IDX file ({e})") from e
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != _IDX_MAGIC[ndim]:
        raise ValueError(f"{path}: bad IDX magic number {magic}, expected {_IDX_MAGIC[ndim]} "
                         f"(unsigned-byte, {ndim}-D)")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    n_bytes = int(np.prod(dims))
    if len(raw) - header != n_bytes:
        raise ValueError(f"{path}: header says {dims} ({n_bytes} bytes) but the payload has "
                         f"{len(raw) - header} bytes")
    if expected_count is not None and dims[0] != expected_count:
        raise ValueError(f"{path}: holds {dims[0]} items, expected {expected_count}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _subset_indices(n: int, subset: int | None, seed: int | None) -> np.ndarray | None:
    if subset is None or int(subset) >= n:
        return None
    if int(subset) <= 0:
        raise ValueError(f"subset must be a positive number of samples, got {subset}")
    if seed is None:
        return np.arange(int(subset))
    return np.sort(np.random.default_rng(int(seed)).permutation(n)[: int(subset)])


class FashionMNIST(Dataset):
    """Fashion-MNIST read straight from the IDX ``.gz`` files (Debian ``dataset-fashion-mnist``).

    Items are ``(transform(PIL 'L' image), int label)``; without a transform the image is a
    uint8 tensor (1, 28, 28).  ``subset``: keep N samples -- the first N, or a random N drawn
    with ``subset_seed`` (kept in original order).  ``download=True`` lets torchvision fetch
    the files into ``root`` when they are missing.
    """

    def __init__(self, root: str | os.PathLike = FASHION_MNIST_ROOT, train: bool = True,
                 transform: Callable | None = None, subset: int | None = None,
                 subset_seed: int | None = None, download: bool = False) -> None:
        self.root = Path(root)
        self.train = train
        self.transform = transform
        img_name, lab_name, count = _FMNIST_FILES[train]
        img_path, lab_path = self.root / img_name, self.root / lab_name
        if not (img_path.is_file() and lab_path.is_file()):
            img_path, lab_path = self._fallback(img_name, lab_name, download)
        images = read_idx_gz(img_path, 3, count)
        labels = read_idx_gz(lab_path, 1, count)
        if images.shape[1:] != (28, 28):
            raise ValueError(f"{img_path}: images are {images.shape[1:]}, expected 28x28")
        if labels.max() > 9:
            raise ValueError(f"{lab_path}: label {int(labels.max())} outside 0..9")
        keep = _subset_indices(count, subset, subset_seed)
        if keep is not None:
            images, labels = images[keep], labels[keep]
        self.data = torch.from_numpy(np.array(images))  # copy: frombuffer arrays are read-only
        self.targets = torch.from_numpy(labels.astype(np.int64))
        self.classes = list(FASHION_MNIST_CLASSES)

    def _fallback(self, img_name: str, lab_name: str, download: bool) -> tuple[Path, Path]:
        tv_raw = self.root / "FashionMNIST" / "raw"
        # torchvision keeps the .gz next to the unpacked files after a download.
        if (tv_raw / img_name).is_file() and (tv_raw / lab_name).is_file():
            return tv_raw / img_name, tv_raw / lab_name
        if not download:
            raise FileNotFoundError(
                f"Fashion-MNIST files {img_name}, {lab_name} not found in {str(self.root)!r}. "
                "Install them with `apt-get install dataset-fashion-mnist` (files go to "
                f"{FASHION_MNIST_ROOT}), set data.root to a folder holding the IDX .gz files, "
                "or set data.download: true to let torchvision download them.")
        from torchvision.datasets import FashionMNIST as TVFashionMNIST

        TVFashionMNIST(str(self.root), train=self.train, download=True)
        return tv_raw / img_name, tv_raw / lab_name

    @property
    def num_classes(self) -> int:
        """Always 10."""
        return 10

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        label = int(self.targets[index])
        if self.transform is None:
            return self.data[index].unsqueeze(0), label
        if getattr(self.transform, "accepts_tensor", False):
            return self.transform(self.data[index].unsqueeze(0)), label
        return self.transform(Image.fromarray(self.data[index].numpy())), label


# ----------------------------------------------------------------------------- ImageFolder

_FOLDER_LAYOUT = "<root>/<split dir>/<class>/<image> (e.g. root/train/n01440764/x.JPEG)"


def build_image_folder(path: str | os.PathLike, transform: Callable | None = None,
                       num_classes: int | None = None, policy: FilePolicy | None = None) -> CheckedImageFolder:
    """torchvision ``ImageFolder`` with clear errors for a missing folder, a class-count mismatch
    and unreadable images (``policy``: raise, or skip them; see :mod:`frozenlm.data.errors`)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"image folder {str(path)!r} does not exist; expected layout {_FOLDER_LAYOUT}")
    if not class_folder_names(path):
        flat = image_files(path)
        if flat and any(VAL_IMAGE.match(f.stem) for f in flat[:100]):
            raise FileNotFoundError(
                f"image folder {str(path)!r} holds {len(flat)} images without class folders: ImageNet's flat "
                "validation set as released. Set data.val_labels to the devkit (ILSVRC2012_devkit_t12 folder or "
                ".tar.gz) or to Kaggle's LOC_val_solution.csv (docs/data_image.md)")
    try:
        ds = CheckedImageFolder(path, transform=transform, policy=policy)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"image folder {str(path)!r} has no usable class folders/images ({e}); "
                                f"expected layout {_FOLDER_LAYOUT}") from e
    if num_classes is not None and len(ds.classes) != int(num_classes):
        raise ValueError(f"image folder {str(path)!r}: found {len(ds.classes)} class folders, "
                         f"expected data.num_classes={num_classes}")
    return ds


# ----------------------------------------------------------------------------- factory

def _split_dir(cfg: Mapping[str, Any], split: str) -> str:
    if split == "train":
        return cfg.get("train_dir", "train")
    if split in ("val", "test", "eval"):
        return cfg.get("val_dir", "val")
    raise ValueError(f"unknown split {split!r}; use 'train' or 'val'")


def _train_classes(cfg: Mapping[str, Any], root: str | None) -> list[str] | None:
    """The classes of the training split when a listing shows them (class folders, or shards named
    by wnid); None when only reading the data would (e.g. ILSVRC2012_img_train.tar itself)."""
    name = cfg.get("name")
    if name == "imagefolder" and root is not None:
        folder = Path(root) / _split_dir(cfg, "train")
        return (class_folder_names(folder) or None) if folder.is_dir() else None
    if name == "tarshards":
        spec = cfg.get("train_shards") or (str(Path(root) / _split_dir(cfg, "train")) if root else None)
        try:
            shards = find_shards(spec) if spec is not None else []
        except FileNotFoundError:
            return None
        stems = [p.name[:-len(".tar")] for p in shards]
        return sorted(set(stems)) if stems and all(is_wnid(s) for s in stems) else None
    return None


def _flat_val_dataset(cfg: Mapping[str, Any], root: str | None, tf: Callable, nc: Any,
                      policy: FilePolicy) -> Dataset:
    """ImageNet's flat validation images labelled by ``data.val_labels`` (devkit or Kaggle csv).

    Labels are positions in the sorted training classes when a listing shows them, else in the
    sorted wnids the label file knows (the 1000 ImageNet classes): the order ImageFolder gives the
    training split, so a wnid has the same index in both splits."""
    labels, known = read_val_labels(cfg["val_labels"])
    classes = _train_classes(cfg, root) or known
    if nc is not None and len(classes) != int(nc):
        raise ValueError(f"data.val_labels {cfg['val_labels']}: {len(classes)} classes, expected "
                         f"data.num_classes={nc}")
    source = f"data.val_labels ({cfg['val_labels']})"
    if cfg.get("name") == "tarshards":
        spec = cfg.get("val_shards") or (str(Path(root) / _split_dir(cfg, "val")) if root else None)
        if spec is None:
            raise ValueError("tarshards needs data.val_shards (e.g. ILSVRC2012_img_val.tar) or data.root")
        # class_names: a label outside the classes in use is an error naming it (TarShardDataset)
        return TarShardDataset(spec, transform=tf, class_names=classes, cache_index=bool(cfg.get("cache_index", True)),
                               policy=policy, member_labels=labels)
    folder = Path(root) / _split_dir(cfg, "val")
    if not folder.is_dir():
        raise FileNotFoundError(f"validation folder {str(folder)!r} does not exist (data.root/data.val_dir)")
    if class_folder_names(folder) and not image_files(folder):
        raise ValueError(f"validation folder {str(folder)!r} is already sorted into class folders; leave "
                         "data.val_labels unset (it labels the flat ILSVRC2012_val_*.JPEG folder)")
    return FlatLabelledFolder(folder, labels, classes, transform=tf, policy=policy, labels_source=source)


def _maybe_subset(ds: Dataset, cfg: Mapping[str, Any], split: str) -> Dataset:
    n = cfg.get("subset_train" if split == "train" else "subset_val")
    keep = _subset_indices(len(ds), n, cfg.get("subset_seed"))
    return ds if keep is None else LabelledSubset(ds, keep.tolist())


class LabelledSubset(torch.utils.data.Subset):
    """``Subset`` that keeps ``classes``/``num_classes`` of the wrapped dataset visible."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        super().__init__(dataset, indices)
        self.classes = list(getattr(dataset, "classes", []))
        self.num_classes = get_num_classes(dataset)


def build_image_transform(cfg_data: Mapping[str, Any], train: bool) -> Callable:
    """The transform ``build_image_dataset`` uses for ``cfg_data.name`` (see transforms.py)."""
    cfg = _data_section(cfg_data)
    if cfg.get("name") == "fashion_mnist":
        return small_image_transform(cfg, train)
    return imagenet_transform(cfg, train)


def build_image_dataset(cfg_data: Mapping[str, Any], split: str = "train", train: bool | None = None,
                        transform: Callable | None = None) -> Dataset:
    """Build the dataset named by ``cfg_data["name"]`` for ``split`` ('train' or 'val').

    ``train`` picks training augmentation (default: ``split == 'train'``); ``transform``
    overrides the configured one.  Every returned dataset has ``classes`` and
    ``num_classes`` (see :func:`get_num_classes`, :func:`get_class_names`). Datasets of image
    files follow ``data.on_error`` (raise | skip) for unreadable images; collate their batches
    with :class:`~frozenlm.data.errors.DropSkipped`.
    """
    cfg = _data_section(cfg_data)
    name = cfg.get("name")
    policy = on_error_policy(cfg)
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown data.name {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    train = (split == "train") if train is None else bool(train)
    tf = transform if transform is not None else build_image_transform(cfg, train)
    nc = cfg.get("num_classes")
    root = cfg.get("root")

    if name == "fashion_mnist":
        if nc is not None and int(nc) != 10:
            raise ValueError(f"fashion_mnist has 10 classes, data.num_classes is {nc}")
        _split_dir(cfg, split)  # validates the split name
        ds = FashionMNIST(root or FASHION_MNIST_ROOT, train=(split == "train"), transform=tf,
                          subset=cfg.get("subset_train" if split == "train" else "subset_val"),
                          subset_seed=cfg.get("subset_seed"), download=bool(cfg.get("download", False)))
        return ds
    if root is None and name != "tarshards":
        raise ValueError(f"data.root must be set for data.name={name!r}")
    if cfg.get("val_labels") and split != "train":
        if name not in ("imagefolder", "tarshards"):
            raise ValueError(f"data.val_labels labels ImageNet's flat validation images; it applies to "
                             f"data.name imagefolder or tarshards, not {name!r}")
        ds = _flat_val_dataset(cfg, root, tf, nc, policy)
    elif name == "imagefolder":
        ds = build_image_folder(Path(root) / _split_dir(cfg, split), tf, nc, policy)
    elif name == "tarshards":
        key = "train_shards" if split == "train" else "val_shards"
        spec = cfg.get(key)
        if spec is None:
            if root is None:
                raise ValueError(f"tarshards needs data.{key} (dir/glob of .tar) or data.root")
            spec = str(Path(root) / _split_dir(cfg, split))
        ds = TarShardDataset(spec, transform=tf, num_classes=nc, cache_index=bool(cfg.get("cache_index", True)),
                             policy=policy)
    elif name in ("imagenet_a", "imagenet_r"):
        space = cfg.get("label_space", "subset")
        ds = build_imagenet_subset(root, name, transform=tf, label_space=space,
                                   num_classes=200 if nc in (None, 1000) else int(nc),
                                   strict_wnids=bool(cfg.get("strict_wnids", False)), policy=policy)
    elif name == "imagenet_sketch":
        ds = WnidImageFolder(root, transform=tf, label_space="1k", policy=policy)
        if nc is not None and int(nc) != 1000:
            raise ValueError(f"imagenet_sketch is labelled in the 1k space; data.num_classes is {nc}")
    else:  # imagenet_c
        if nc is not None and int(nc) != 1000:
            raise ValueError(f"imagenet_c is labelled in the 1k space; data.num_classes is {nc}")
        ds = ImageNetCConcat(imagenet_c_datasets(root, tf, cfg.get("corruptions"), cfg.get("severities"), policy))
    return _maybe_subset(ds, cfg, split)


def get_num_classes(ds: Dataset) -> int:
    """Width of a dataset's label space (what the classifier head must output)."""
    n = getattr(ds, "num_classes", None)
    if n is not None:
        return int(n)
    classes = getattr(ds, "classes", None)
    if classes is None:
        raise AttributeError(f"{type(ds).__name__} exposes neither num_classes nor classes")
    return len(classes)


def get_class_names(ds: Dataset) -> list[str]:
    """Class names in label order (wnids for ImageNet-style folders)."""
    if isinstance(ds, WnidImageFolder) and ds.label_space == "1k":
        from .imagenet_variants import imagenet_wnids

        return list(imagenet_wnids())
    return list(getattr(ds, "classes"))
