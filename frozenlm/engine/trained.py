"""Rebuild a trained model from a frozenlm checkpoint: the one path used by eval, analyze and plots."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from frozenlm.config import Config, check_keys, make_config
from frozenlm.engine import checkpoint as ckpt
from frozenlm.engine.rng import seed_all
from frozenlm.engine.task import get_task, task_schema
from frozenlm.tasks.base import Task

__all__ = ["load_trained", "rebuild_trained", "checkpoint_config"]


def checkpoint_config(path: str | Path, overrides: Sequence[str] = ()) -> tuple[Config, Path]:
    """The resolved config saved with a checkpoint, plus ``overrides`` (checked against the task's keys),
    and the resolved step directory.

    Keys in the saved config that no code reads any more (older runs) are named in a warning and
    otherwise left alone; an unknown key in ``overrides`` is an error.
    """
    path = ckpt.resolve_checkpoint(path)
    saved = ckpt.read_meta(path).get("config")
    if not isinstance(saved, dict) or not saved.get("task"):
        raise ckpt.CheckpointError(f"{path / ckpt.META_FILE} holds no training config with a `task:`; "
                                   f"it was not written by `frozenlm train`")
    schema = task_schema(saved["task"])
    stale = check_keys(saved, schema) if schema is not None else []
    if stale:
        warnings.warn(f"{path}: the saved config has keys that task {saved['task']!r} does not read (written by an "
                      f"older frozenlm?); they are ignored: {', '.join(stale)}", stacklevel=2)
    return make_config(saved, overrides, schema=schema), path


def rebuild_trained(path: str | Path, overrides: Sequence[str] = ()) -> tuple[Task, nn.Module, Config, Path]:
    """``(task, model, cfg, step dir)``: the task object that built the model, so that callers which
    also need its datasets (evaluation, plots) reuse what it already read instead of a second task."""
    cfg, step_dir = checkpoint_config(path, overrides)
    seed_all(cfg.seed)
    task = get_task(cfg.task)
    model = task.build_model(cfg)
    ckpt.load_checkpoint(step_dir, model)
    return task, model, cfg, step_dir


def load_trained(path: str | Path, overrides: Sequence[str] = (), device: Any = "cpu") -> tuple[nn.Module, Config]:
    """``(model, cfg)`` from a run dir, a step dir or a file inside one: the model is built from the saved
    config (plus ``overrides``, e.g. ``model.lm.source=NEW_PATH`` after moving the LM), its weights
    are loaded with the frozen blocks verified by digest, and it is returned in eval mode on ``device``."""
    _, model, cfg, _ = rebuild_trained(path, overrides)
    return model.to(device).eval(), cfg
