"""Task registry: a task supplies model, data, loss and metrics; the engine does the rest.

Built-in tasks are listed by name as ``"module:Class"`` strings and imported only when asked for,
so the engine imports no task and a broken task module fails loudly for that task alone. User
tasks join with ``@register_task(name)``. The protocol itself is ``frozenlm.tasks.base.Task``.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Optional

from frozenlm.config import KeySchema, engine_schema
from frozenlm.tasks.base import Task

__all__ = ["Task", "register_task", "get_task", "task_class", "registered_tasks", "task_schema", "BUILTIN_TASKS"]

_USER_TASKS: dict[str, type] = {}

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


def register_task(name: str) -> Callable[[type], type]:
    """Class decorator registering a user task under ``name`` (a registered name wins over a built-in one).
    The class is instantiated without arguments for every run."""

    def deco(cls: type) -> type:
        if not isinstance(cls, type):
            raise TypeError(f"register_task({name!r}) decorates a task class (one object is built per run), "
                            f"got {type(cls).__name__}")
        _USER_TASKS[name] = cls
        return cls

    return deco


def registered_tasks() -> list[str]:
    """Names of all tasks: the built-in ones and any registered by user code."""
    return sorted(set(_USER_TASKS) | set(BUILTIN_TASKS))


def task_class(name: str) -> type:
    """The class of the task called ``name``; a clear error lists the known ones.

    A built-in task's module is imported on first use; its ImportError (a missing optional
    package, a bug) propagates with the task named, instead of turning into "unknown task".
    """
    if name in _USER_TASKS:
        return _USER_TASKS[name]
    if name not in BUILTIN_TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {registered_tasks()} (set `task:` in the config)")
    module, _, cls = BUILTIN_TASKS[name].partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"task {name!r} cannot be used: importing {module} failed: {e}") from e
    return getattr(mod, cls)


def get_task(name: str) -> Task:
    """A new object of the task called ``name``: each run gets its own, so no state leaks between runs."""
    return task_class(name)()


def task_schema(task_name: Any) -> Optional[KeySchema]:
    """The keys a config for ``task_name`` may hold: the engine's plus the task's ``config_keys``.
    ``None`` when no task is named yet (the config is then checked once it is)."""
    if not task_name:
        return None
    keys = getattr(task_class(str(task_name)), "config_keys", None)
    schema = engine_schema()
    if keys is None:
        import warnings
        warnings.warn(f"task {task_name!r} declares no config_keys: keys outside the engine's sections are not "
                      f"checked, so a misspelt key there would be ignored", stacklevel=2)
        return schema.add(["*"])
    return schema.add(keys)
