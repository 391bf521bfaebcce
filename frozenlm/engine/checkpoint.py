"""Atomic, frozen-weight-free checkpoints.

Layout::

    run_dir/checkpoints/
        step_0001000/ model.safetensors  train_state.pt  meta.json
        latest        (text: "step_0001000")
        best          (text: name of the best step dir)

``model.safetensors`` holds every model tensor EXCEPT the frozen ones (LM blocks and
``FrozenModule``s such as a frozen text encoder, see ``frozenlm.layer.frozen_param_names``), which are
rebuilt from their source; ``meta.json`` records that source (name, layers, digest) so loading
can refuse a different one. ``train_state.pt`` holds only tensors/numbers/strings/lists/dicts and
is read with ``weights_only=True`` (no arbitrary unpickling).
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from frozenlm.errors import CheckpointError
from frozenlm.layer import frozen_param_names
from frozenlm.layer import frozen_sources as layer_frozen_sources
from frozenlm.splice import splices

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "load_train_state", "read_meta",
           "resolve_checkpoint", "latest_checkpoint", "cleanup_tmp", "frozen_param_names", "frozen_sources",
           "checkpoint_dir_name", "write_model_dir"]

MODEL_FILE, STATE_FILE, META_FILE = "model.safetensors", "train_state.pt", "meta.json"
_TMP_PREFIX = ".tmp_"
_POINTERS = ("latest", "best")


def frozen_sources(model: nn.Module) -> dict[str, dict]:
    """``frozenlm.layer.frozen_sources`` in the JSON form stored in ``meta.json``."""
    return _jsonable(layer_frozen_sources(model))


def _jsonable(obj: Any) -> Any:
    # Round-trip through JSON so tuples become lists and comparisons with meta.json are exact.
    return json.loads(json.dumps(obj))


def checkpoint_dir_name(step: int) -> str:
    """Directory name for a step (zero-padded so names sort by step)."""
    return f"step_{step:07d}"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories
    finally:
        os.close(fd)


def _write_pointer(root: Path, name: str, target: str) -> None:
    tmp = root / f"{_TMP_PREFIX}{name}_{os.getpid()}"
    tmp.write_text(target + "\n")
    _fsync_file(tmp)
    os.replace(tmp, root / name)
    _fsync_dir(root)


def _read_pointer(root: Path, name: str) -> Optional[Path]:
    p = root / name
    if not p.is_file():
        return None
    target = root / p.read_text().strip()
    return target if _is_complete(target) else None


def _is_complete(d: Path) -> bool:
    return d.is_dir() and all((d / f).is_file() for f in (MODEL_FILE, STATE_FILE, META_FILE))


def _step_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("step_*") if p.is_dir())


def cleanup_tmp(root: Path) -> None:
    """Remove leftovers of saves that crashed before their final rename."""
    for p in Path(root).glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def latest_checkpoint(run_dir: str | Path) -> Optional[Path]:
    """The newest complete checkpoint of a run (``latest`` pointer, else the newest complete step dir)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    found = _read_pointer(root, "latest")
    if found is not None:
        return found
    complete = [d for d in _step_dirs(root) if _is_complete(d)]
    return complete[-1] if complete else None


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a step dir, a ``latest``/``best`` pointer file, a ``checkpoints`` dir or a run dir."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_file():
        if path.name in (MODEL_FILE, STATE_FILE, META_FILE):  # a file inside a step dir: use the dir
            return path.parent
        if path.name not in _POINTERS:
            raise CheckpointError(f"{path} is not a checkpoint: give a run dir, its checkpoints/ dir, a step_* dir, "
                                  f"a file inside one ({MODEL_FILE}, {META_FILE}), or a latest/best pointer")
        name = path.read_bytes()[:256].decode("utf-8", "replace").strip()
        target = path.parent / name
        if not name.startswith("step_") or not target.is_dir():
            raise CheckpointError(f"pointer {path} names {name!r}, which is not a step directory next to it")
        return target
    if (path / META_FILE).exists() or (path / MODEL_FILE).exists():
        return path
    run_dir = path.parent if path.name == "checkpoints" else path
    found = latest_checkpoint(run_dir)
    if found is None:
        raise CheckpointError(f"no complete checkpoint under {path} (expected {MODEL_FILE}, {STATE_FILE}, "
                              f"{META_FILE} in a step_* directory)")
    return found


def model_state_to_save(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every state-dict tensor except frozen weights, as independent contiguous CPU tensors."""
    skip = frozen_param_names(model)
    # clone() breaks storage sharing (tied weights), which safetensors refuses to write.
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items() if k not in skip}


def _splices(model: nn.Module) -> dict[str, dict]:
    return _jsonable({name: rec.describe() for name, rec in splices(model).items()})


def write_model_dir(final: str | Path, model: nn.Module, meta: dict[str, Any],
                    train_state: Optional[dict[str, Any]] = None,
                    json_files: Optional[dict[str, Any]] = None) -> Path:
    """Atomically write the directory ``final`` (temp dir + fsync + rename): ``model.safetensors``
    (every tensor but the frozen ones), ``meta.json`` (``meta`` plus the frozen sources and any
    :func:`frozenlm.splice.splice` placements), ``train_state.pt`` when ``train_state`` is given and
    one JSON file per ``json_files`` entry. An existing ``final`` is swapped out, then removed."""
    final = Path(final)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{_TMP_PREFIX}{final.name}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    files = [MODEL_FILE, META_FILE]
    save_file(model_state_to_save(model), str(tmp / MODEL_FILE))
    if train_state is not None:
        torch.save(train_state, tmp / STATE_FILE)
        files.append(STATE_FILE)
    meta = dict(meta, frozen_sources=frozen_sources(model))
    placed = _splices(model)
    if placed:
        meta["splices"] = placed
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    for fname, obj in (json_files or {}).items():
        (tmp / fname).write_text(json.dumps(obj, indent=2))
        files.append(fname)
    for f in files:
        _fsync_file(tmp / f)
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. after eval): swap old out first
        old = root / f"{_TMP_PREFIX}old_{final.name}_{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    return final


def save_checkpoint(root: str | Path, step: int, model: nn.Module, train_state: dict[str, Any],
                    meta: dict[str, Any], keep_last: int = 2, is_best: bool = False) -> Path:
    """Atomically write ``root/step_XXXXXXX`` (:func:`write_model_dir`), move the ``latest``
    (and, if ``is_best``, ``best``) pointers, and prune all but the last ``keep_last`` plus best."""
    root = Path(root)
    name = checkpoint_dir_name(step)
    final = write_model_dir(root / name, model, dict(meta, step=step), train_state=train_state)
    _write_pointer(root, "latest", name)
    if is_best:
        _write_pointer(root, "best", name)
    _prune(root, keep_last)
    return final


def _prune(root: Path, keep_last: int) -> None:
    dirs = _step_dirs(root)
    keep = set(dirs[-max(1, keep_last):])
    for ptr in ("latest", "best"):
        target = _read_pointer(root, ptr)
        if target is not None:
            keep.add(target)
    for d in dirs:
        if d not in keep:
            shutil.rmtree(d, ignore_errors=True)


def read_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    """Parsed ``meta.json`` of a checkpoint."""
    ckpt_dir = resolve_checkpoint(ckpt_dir)
    path = ckpt_dir / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir} is incomplete: missing {META_FILE}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"corrupt {path}: {e}") from e


def load_train_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """``train_state.pt`` read with ``weights_only=True``."""
    path = resolve_checkpoint(ckpt_dir) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path.parent} is incomplete: missing {STATE_FILE}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle...
        raise CheckpointError(f"cannot read {path} (corrupt or truncated?): {e}") from e


#: Fields of a frozen reference that identify the block; `source` is only where it was read from.
IDENTITY_FIELDS = ("digest", "layers", "dtype", "arch", "mask", "rope")


def _check_frozen_sources(saved: dict[str, dict], current: dict[str, dict], where: Path) -> None:
    """Refuse a model whose frozen blocks differ from the checkpoint's (by digest, layer indices,
    architecture, dtype or attention mode). A different source path with the same weights is
    accepted with a warning: LM folders get moved. Fields a checkpoint predates are not compared."""
    problems, moved = [], []
    for mod in sorted(set(saved) | set(current)):
        if mod not in current:
            problems.append(f"{mod}: in the checkpoint but not in the model")
        elif mod not in saved:
            problems.append(f"{mod}: in the model but not in the checkpoint")
        else:
            for field in IDENTITY_FIELDS:
                if field not in saved[mod]:
                    continue
                a, b = saved[mod][field], current[mod].get(field)
                if field == "arch" and isinstance(a, dict) and isinstance(b, dict):
                    # Fields a newer BlockConfig added are absent from older checkpoints: compare the shared ones.
                    diff = sorted(k for k in set(a) & set(b) if a[k] != b[k])
                    if diff:
                        problems.append(f"{mod}: architecture differs in " + ", ".join(
                            f"{k} (checkpoint {a[k]!r}, model {b[k]!r})" for k in diff))
                elif a != b:
                    problems.append(f"{mod}: {field} differs (checkpoint {a!r}, model {b!r})")
            if saved[mod].get("source") != current[mod].get("source"):
                moved.append(f"{mod}: {saved[mod].get('source')!r} -> {current[mod].get('source')!r}")
    if problems:
        hint = (f" (the model reads it from {', '.join(moved)})" if moved else "")
        raise CheckpointError(f"frozen weights mismatch for {where}:\n  " + "\n  ".join(problems)
                              + f"\nThe checkpoint was trained with other frozen weights{hint}; build the model with "
                              "the same LM/text-encoder weights and layers (e.g. model.lm.source=PATH_TO_THE_SAME_LM).")
    if moved:
        warnings.warn(f"{where}: frozen source path changed ({'; '.join(moved)}); the weights match the "
                      f"checkpoint's digest, layers and architecture, so they are used", stacklevel=3)


def _check_splices(saved: Optional[dict[str, dict]], current: dict[str, dict], where: Path) -> None:
    """Refuse a model whose spliced LM layers sit elsewhere than the checkpoint's: the keys and shapes
    could match while the block runs after another module. Checkpoints older than splice record none."""
    if saved is None or saved == current:
        return
    lines = []
    for name in sorted(set(saved) | set(current)):
        a, b = saved.get(name), current.get(name)
        if a != b:
            lines.append(f"{name}: checkpoint {a or 'absent'}, model {b or 'absent'}")
    raise CheckpointError(f"spliced LM layers differ from {where}:\n  " + "\n  ".join(lines)
                          + "\nsplice the model as it was when saved (same at=, layout=, select= and width)")


def load_checkpoint(path: str | Path, model: nn.Module, *, check_frozen: bool = True) -> dict[str, Any]:
    """Load trainable/non-frozen weights into ``model`` after verifying keys, shapes and the frozen
    source. Returns ``{"path": Path, "meta": dict}``; read optimizer etc. with :func:`load_train_state`."""
    ckpt_dir = resolve_checkpoint(path)
    missing_files = [f for f in (MODEL_FILE, META_FILE) if not (ckpt_dir / f).is_file()]
    if missing_files:
        raise CheckpointError(f"{ckpt_dir} is incomplete: missing {', '.join(missing_files)}")
    meta = read_meta(ckpt_dir)
    if check_frozen:
        _check_frozen_sources(meta.get("frozen_sources") or {}, frozen_sources(model), ckpt_dir)
    _check_splices(meta.get("splices"), _splices(model), ckpt_dir)
    try:
        tensors = load_file(str(ckpt_dir / MODEL_FILE))
    except Exception as e:
        raise CheckpointError(f"cannot read {ckpt_dir / MODEL_FILE} (corrupt or truncated?): {e}") from e
    frozen = frozen_param_names(model)
    own = {k: v for k, v in model.state_dict().items() if k not in frozen}
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {ckpt_dir} does not match the model:\n"
                              f"  missing keys ({len(missing)}): {missing}\n"
                              f"  unexpected keys ({len(unexpected)}): {unexpected}")
    bad = [f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
           for k, v in own.items() if tuple(tensors[k].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointError(f"shape mismatch loading {ckpt_dir}:\n  " + "\n  ".join(bad))
    result = model.load_state_dict(tensors, strict=False)
    still_missing = sorted(set(result.missing_keys) - frozen)
    if still_missing:
        raise CheckpointError(f"keys not loaded into the model: {still_missing}")
    return {"path": ckpt_dir, "meta": meta}
