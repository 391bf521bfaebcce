"""Task registry: a task supplies model, data, loss and metrics; the engine does the rest.

Built-in tasks are listed by name as ``"module:Class"`` strings and imported only when asked for,
so the engine imports no task and a broken task module fails loudly for that task alone.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.data import Dataset

from frozenlm.config import KeySchema, engine_schema

__all__ = ["Task", "register_task", "get_task", "registered_tasks", "primary_metric", "task_schema", "BUILTIN_TASKS"]

_TASKS: dict[str, "Task"] = {}

#: name -> "module:Class" of every task that ships with frozenlm (imported lazily by get_task).
BUILTIN_TASKS: dict[str, str] = {
    "image": "frozenlm.tasks.image:ImageClassification",
    "image_cluttered": "frozenlm.tasks.image_cluttered:ClutteredImageClassification",
    "motion": "frozenlm.tasks.motion:MotionForecasting",
    "pointcloud": "frozenlm.tasks.pointcloud:PointCloudClassification",
    "retrieval": "frozenlm.tasks.retrieval:RetrievalTask",
    "sqa3d": "frozenlm.tasks.sqa3d:SituatedQA",
    "video": "frozenlm.tasks.video:VideoClassification",
    "vqa": "frozenlm.tasks.vqa:VQATask",
}


class Task:
    """Interface a task implements (subclassing is optional; duck typing is enough).

    ``eval_batch`` returns SUMS (counts, summed losses, per-class vectors...). The engine adds them
    over batches and all-reduces them over ranks before ``finalize`` turns them into metrics, so
    metrics are exact regardless of batch size or world size.

    ``primary_metric`` names the validation metric that picks ``checkpoints/best`` when the config
    sets no ``best_metric``, and ``primary_mode`` says whether higher ("max") or lower ("min") is better.
    """

    primary_metric: str = ""
    primary_mode: str = "max"
    #: Every config key the task reads beyond the engine's (dotted names, ``a.*`` = open mapping).
    #: Unknown keys are refused; a task that leaves this as None gets its own sections unchecked.
    config_keys: Optional[tuple[str, ...]] = None
    #: False when evaluation must see the whole split in one process (retrieval ranks every
    #: caption against every image); the engine then refuses to evaluate with several ranks.
    distributed_eval: bool = True

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
        """Turn globally summed values into metrics (``primary_metric`` must be among them)."""
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
    """Names of all tasks: the built-in ones and any registered by user code."""
    return sorted(set(_TASKS) | set(BUILTIN_TASKS))


def get_task(name: str) -> Task:
    """The task registered under ``name``; a clear error lists the known ones.

    A built-in task's module is imported on first use; its ImportError (a missing optional
    package, a bug) propagates with the task named, instead of turning into "unknown task".
    """
    if name not in _TASKS and name in BUILTIN_TASKS:
        module, _, cls = BUILTIN_TASKS[name].partition(":")
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ImportError(f"task {name!r} cannot be used: importing {module} failed: {e}") from e
        if name not in _TASKS:
            raise RuntimeError(f"{module} was imported but did not register task {name!r} (class {cls})")
    if name not in _TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {registered_tasks()} (set `task:` in the config)")
    return _TASKS[name]


def primary_metric(task: Any, task_name: str) -> tuple[str, str]:
    """``(metric, mode)`` a task declares for choosing the best checkpoint; an error if it declares none."""
    name, mode = getattr(task, "primary_metric", ""), getattr(task, "primary_mode", "max")
    if not name:
        raise ValueError(f"task {task_name!r} declares no primary_metric; set best_metric (and best_mode) in the "
                         f"config, or give the task class `primary_metric = ...` and `primary_mode = 'max'|'min'`")
    if mode not in ("max", "min"):
        raise ValueError(f"task {task_name!r}: primary_mode must be 'max' or 'min', got {mode!r}")
    return name, mode


def task_schema(task_name: Any) -> Optional[KeySchema]:
    """The keys a config for ``task_name`` may hold: the engine's plus the task's ``config_keys``.
    ``None`` when no task is named yet (the config is then checked once it is)."""
    if not task_name:
        return None
    keys = getattr(get_task(str(task_name)), "config_keys", None)
    schema = engine_schema()
    if keys is None:
        import warnings
        warnings.warn(f"task {task_name!r} declares no config_keys: keys outside the engine's sections are not "
                      f"checked, so a misspelt key there would be ignored", stacklevel=2)
        return schema.add(["*"])
    return schema.add(keys)
