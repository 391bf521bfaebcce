"""torchvision's ``ImageFolder`` with the ``data.on_error`` policy for unreadable images."""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

from torchvision.datasets import ImageFolder

from .errors import FilePolicy, read_image

__all__ = ["CheckedImageFolder"]


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
