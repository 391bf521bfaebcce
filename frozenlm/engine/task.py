"""Task registry: a task supplies model, data, loss and metrics; the engine does the rest."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.data import Dataset

__all__ = ["Task", "register_task", "get_task", "registered_tasks"]

_TASKS: dict[str, "Task"] = {}


class Task:
    """Interface a task implements (subclassing is optional; duck typing is enough).

    ``eval_batch`` returns SUMS (counts, summed losses, per-class vectors...). The engine adds them
    over batches and all-reduces them over ranks before ``finalize`` turns them into metrics, so
    metrics are exact regardless of batch size or world size.
    """

    def build_model(self, cfg: Any) -> nn.Module:
        """Build the model (frozen LM blocks included) on CPU."""
        raise NotImplementedError

    def build_dataset(self, cfg: Any, split: str) -> Optional[Dataset]:
        """Dataset for ``split`` ("train", "val", maybe "test"); ``None`` if the split does not exist."""
        raise NotImplementedError

    def train_step_loss(self, model: nn.Module, batch: Any, cfg: Any) -> torch.Tensor:
        """Scalar training loss for one micro-batch (already on the device). Mixup etc. go here."""
        raise NotImplementedError

    def eval_batch(self, model: nn.Module, batch: Any, cfg: Any) -> dict[str, torch.Tensor]:
        """Per-batch sums (e.g. ``correct1``, ``count``, ``loss_sum``)."""
        raise NotImplementedError

    def finalize(self, sums: dict[str, torch.Tensor], cfg: Any) -> dict[str, float]:
        """Turn globally summed values into metrics (first key is the default 'best' metric)."""
        raise NotImplementedError

    def collate_fn(self, cfg: Any, split: str) -> Optional[Callable]:
        """Optional custom collate function; ``None`` = PyTorch's default."""
        return None

    def param_groups(self, model: nn.Module, cfg: Any) -> Optional[list[dict]]:
        """Optional optimizer groups (each may carry ``lr_mult``); ``None`` = engine default."""
        return None


def register_task(name: str) -> Callable[[Any], Any]:
    """Decorator registering a task class (instantiated without arguments) or object under ``name``."""

    def deco(obj: Any) -> Any:
        _TASKS[name] = obj() if isinstance(obj, type) else obj
        return obj

    return deco


def registered_tasks() -> list[str]:
    """Names of all registered tasks."""
    _import_builtin_tasks()
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    """The task registered under ``name``; a clear error lists the known ones."""
    if name not in _TASKS:
        _import_builtin_tasks()
    if name not in _TASKS:
        raise KeyError(f"unknown task {name!r}; registered tasks: {sorted(_TASKS) or 'none'} "
                       "(set `task:` in the config)")
    return _TASKS[name]


def _import_builtin_tasks() -> None:
    # Task modules register themselves on import; importing lazily keeps the engine free of
    # heavy task dependencies (timm, video decoders...) until a task is actually asked for.
    try:
        import frozenlm.tasks  # noqa: F401
    except ImportError:
        pass
