"""Image folders: torchvision's ``ImageFolder`` and a flat folder labelled by a file, both with the
``data.on_error`` policy for unreadable images."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from .errors import FilePolicy, read_image

__all__ = ["CheckedImageFolder", "FlatLabelledFolder", "IMAGE_EXTENSIONS", "class_folder_names", "image_files"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".tif", ".tiff")


class CheckedImageFolder(ImageFolder):
    """``ImageFolder`` whose images decode through :func:`~frozenlm.data.errors.read_image`: an
    unreadable file raises an error naming it, or (``policy`` in skip mode) the item is ``None``,
    logged and counted (batch it with :class:`~frozenlm.data.errors.DropSkipped`)."""

    def __init__(self, root: str | os.PathLike, transform: Optional[Callable] = None,
                 policy: Optional[FilePolicy] = None, **kwargs: Any) -> None:
        self.policy = policy or FilePolicy()
        super().__init__(str(root), transform=transform, loader=read_image, **kwargs)

    def __getitem__(self, index: int) -> Any:
        label = self.samples[index][1]
        return self.policy.call(lambda: super(CheckedImageFolder, self).__getitem__(index),
                                f"item {index}, label {label}")


def class_folder_names(root: str | os.PathLike) -> list[str]:
    """The sorted sub-folder names of ``root``: the classes ``ImageFolder`` finds there."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir())


def image_files(root: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``root`` (not in sub-folders), sorted by name."""
    return sorted(Path(e.path) for e in os.scandir(root) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))


class FlatLabelledFolder(Dataset):
    """Images directly in one folder (ImageNet's ``ILSVRC2012_val_*.JPEG``) labelled by file stem.

    ``labels`` maps a file stem to its class name (a wnid); ``classes`` fixes the label order
    (label = position in it). Every image must have a label in ``classes``; a label file that
    covers more images than the folder holds is reported once (a partial copy scores on fewer
    images). Items are ``(transform(image), label)``, or ``None`` for an unreadable image under
    ``data.on_error=skip``."""

    def __init__(self, root: str | os.PathLike, labels: Mapping[str, str], classes: Sequence[str],
                 transform: Optional[Callable] = None, policy: Optional[FilePolicy] = None,
                 labels_source: str = "the label file") -> None:
        self.root = str(root)
        self.transform = transform
        self.policy = policy or FilePolicy()
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        files = image_files(root)
        if not files:
            raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) directly in {root}")
        unlabelled = [f.name for f in files if f.stem not in labels]
        if unlabelled:
            raise ValueError(f"{len(unlabelled)} of {len(files)} images in {root} have no label in {labels_source} "
                             f"(e.g. {unlabelled[:3]}); is it the label file of these images?")
        foreign = sorted({labels[f.stem] for f in files} - set(self.class_to_idx))
        if foreign:
            raise ValueError(f"images in {root} are labelled with {len(foreign)} class(es) outside the "
                             f"{len(self.classes)} classes in use (e.g. {foreign[:5]}); the training split "
                             "must hold every class of the validation images")
        if len(files) < len(labels):
            print(f"[data] {root}: {len(files)} images, {labels_source} labels {len(labels)}; scoring on the "
                  f"{len(files)} present", file=sys.stderr, flush=True)
        self.samples = [(str(f), self.class_to_idx[labels[f.stem]]) for f in files]
        self.targets = [s[1] for s in self.samples]

    @property
    def num_classes(self) -> int:
        """Number of classes in the label space."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> tuple:
        path, label = self.samples[index]
        img = read_image(path)
        return (self.transform(img) if self.transform is not None else img), label

    def __getitem__(self, index: int) -> Any:
        return self.policy.call(lambda: self._load(index), f"item {index}, label {self.samples[index][1]}")
