"""Save and rebuild trained models: engine run/step dirs and `save_trained` dirs, the one path used by
eval, analyze and plots."""
from __future__ import annotations

import importlib.metadata
import json
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from torch import nn

from frozenlm.config import Config, check_keys, make_config
from frozenlm.engine import checkpoint as ckpt
from frozenlm.engine.rng import seed_all
from frozenlm.engine.task import get_task, task_schema
from frozenlm.tasks.base import Task

__all__ = ["load_trained", "rebuild_trained", "checkpoint_config", "save_trained", "CONFIG_FILE", "TRAINED_FORMAT"]

#: huggingface_hub's name for a model's config; a `save_trained` dir is model.safetensors + meta.json + this.
CONFIG_FILE = "config.json"
TRAINED_FORMAT = "frozenlm-trained"


def _version() -> str:
    try:
        return importlib.metadata.version("frozenlm")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP keeps the model in `.module`, torch.compile in `._orig_mod`: their state-dict keys carry prefixes.
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def save_trained(model: nn.Module, path: str | Path, config: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``model`` to the directory ``path``, as huggingface_hub's ``save_pretrained`` lays one out:

    - ``model.safetensors``: every state-dict tensor except frozen LM blocks and FrozenModules, which
      are read again from their source on load (a frozen backbone's weights are kept: nothing rebuilds them);
    - ``meta.json``: each frozen block's source, layers, architecture and SHA-256 digest, the
      :func:`frozenlm.splice` placements and the frozenlm version;
    - ``config.json``: ``config`` (JSON-able), when given. A training config with a ``task:`` lets
      :func:`load_trained` rebuild the model on its own; any other model is loaded into one the caller builds.

    The directory is written atomically (the engine's checkpoint writer). An existing directory is
    replaced only if it is empty or an earlier ``save_trained`` output.
    """
    model, path = _unwrap(model), Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ckpt.CheckpointError(f"{path} exists and is not a directory")
        meta_file = path / ckpt.META_FILE
        ours = meta_file.is_file() and json.loads(meta_file.read_text() or "{}").get("format") == TRAINED_FORMAT
        if any(path.iterdir()) and not ours:
            raise ckpt.CheckpointError(f"{path} exists and is not a save_trained directory; save_trained replaces the "
                                       "whole directory, so give a new or empty one")
    files: dict[str, Any] = {}
    if config is not None:
        cfg = config.to_dict() if isinstance(config, Config) else config
        try:
            files[CONFIG_FILE] = json.loads(json.dumps(cfg))
        except (TypeError, ValueError) as e:
            raise ckpt.CheckpointError(f"save_trained: config is not JSON-serialisable ({e}); give plain "
                                       "dicts, lists, strings and numbers") from None
        task = cfg.get("task") if isinstance(cfg, Mapping) else None
        schema = task_schema(task) if task else None
        bad = check_keys(cfg, schema) if schema is not None else []
        if bad:
            raise ckpt.CheckpointError(f"save_trained: config keys that task {task!r} does not read: {', '.join(bad)}")
    meta = {"format": TRAINED_FORMAT, "format_version": 1, "frozenlm_version": _version()}
    return ckpt.write_model_dir(path, model, meta, json_files=files)


def _saved_config(step_dir: Path, meta: Mapping[str, Any]) -> Any:
    if "config" in meta:  # an engine checkpoint
        return meta["config"]
    file = step_dir / CONFIG_FILE
    if meta.get("format") == TRAINED_FORMAT and file.is_file():
        try:
            return json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise ckpt.CheckpointError(f"corrupt {file}: {e}") from None
    return None


def checkpoint_config(path: str | Path, overrides: Sequence[str] = ()) -> tuple[Config, Path]:
    """The resolved config saved with a checkpoint (an engine step dir's ``meta.json``, or a ``save_trained``
    dir's ``config.json``), plus ``overrides`` (checked against the task's keys), and the resolved directory.

    Keys in the saved config that no code reads any more (older runs) are named in a warning and
    otherwise left alone; an unknown key in ``overrides`` is an error.
    """
    path = ckpt.resolve_checkpoint(path)
    meta = ckpt.read_meta(path)
    saved = _saved_config(path, meta)
    if not isinstance(saved, dict) or not saved.get("task"):
        raise ckpt.CheckpointError(
            f"{path} holds no training config with a `task:`, so frozenlm cannot rebuild its model "
            f"(neither `frozenlm train` nor save_trained(..., config=<a config with a task>) wrote it). Build the same "
            f"model yourself (e.g. the same timm model and frozenlm.splice call) and load into it: "
            f"frozenlm.load_trained({str(path)!r}, model=model)")
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


def load_trained(path: str | Path, overrides: Sequence[str] = (), device: Any = "cpu", *,
                 model: Optional[nn.Module] = None) -> tuple[nn.Module, Any]:
    """``(model, config)`` from a run dir, a step dir, a file inside one, or a :func:`save_trained` dir.

    Without ``model``, the model is built from the saved config (plus ``overrides``, e.g.
    ``model.lm.source=NEW_PATH`` after moving the LM), which must have a ``task:``. With ``model`` (any
    model built as the saved one was: the same backbone, :func:`frozenlm.splice` calls and LM sources),
    the weights are loaded into it and the saved config (or None) is returned as it was stored. Either
    way keys and shapes must match exactly, the frozen blocks are verified by digest, layers and
    architecture, and splices by placement; the model is returned in eval mode on ``device``.
    """
    if model is None:
        _, model, cfg, _ = rebuild_trained(path, overrides)
        return model.to(device).eval(), cfg
    if overrides:
        raise ckpt.CheckpointError("load_trained: overrides only apply when the model is rebuilt from its config; "
                                   "with model= build the model as you want it")
    target = _unwrap(model)
    info = ckpt.load_checkpoint(path, target)
    saved = _saved_config(info["path"], info["meta"])
    return model.to(device).eval(), Config(saved) if isinstance(saved, dict) else saved
