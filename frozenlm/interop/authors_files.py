"""Read the authors' released training checkpoints safely (ziqipang/LM4VisualEncoding).

Three formats, each defined by the authors' own save code:

- image (DeiT ``image_classification/main.py``): ``{'model', 'optimizer', 'lr_scheduler', 'epoch',
  'model_ema', 'scaler', 'args'}``, ``args`` an ``argparse.Namespace``;
- video (VideoMAE ``video_understanding/utils.py`` ``save_model``): ``{'model', 'optimizer', 'epoch',
  'scaler', 'args'}`` and ``'model_ema'`` when EMA was on;
- pointcloud (Point-BERT ``pointcloud_classification/tools/builder.py`` ``save_checkpoint``):
  ``{'base_model', 'optimizer', 'epoch', 'metrics', 'best_metrics'}``; the metrics are the dicts
  ``Acc_Metric.state_dict()`` returns (``{'acc': tensor}``), and the weights carry a ``module.``
  prefix when the model was wrapped in (Distributed)DataParallel.

Only ``torch.load(weights_only=True)`` is used, with one extra allowed global, ``argparse.Namespace``
(the ``args`` of the image and video formats). Every other object the formats hold (optimizer,
scheduler and scaler state dicts, metrics) is plain data that weights-only unpickling accepts. A file
that needs any other global is refused with that global named; nothing is ever fully unpickled.
"""
from __future__ import annotations

import argparse
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError

__all__ = ["AuthorsCheckpoint", "FORMATS", "SAFE_GLOBALS", "read_authors_checkpoint", "load_weights_only"]

#: The only globals weights-only unpickling may resolve beyond torch's defaults.
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)


@dataclass(frozen=True)
class Format:
    """One of the authors' checkpoint layouts: where the weights are and which top-level keys it has."""

    name: str
    spec: str  # the authors' file that writes it
    weights: str  # top-level key of the model's state dict
    keys: frozenset[str]  # every top-level key the authors' code writes
    has_args: bool


FORMATS: dict[str, Format] = {
    "image": Format("image", "ziqipang/LM4VisualEncoding image_classification/main.py (DeiT)", "model",
                    frozenset({"model", "optimizer", "lr_scheduler", "epoch", "model_ema", "scaler", "args"}), True),
    "video": Format("video", "ziqipang/LM4VisualEncoding video_understanding/utils.py save_model (VideoMAE)", "model",
                    frozenset({"model", "optimizer", "epoch", "scaler", "args", "model_ema"}), True),
    "pointcloud": Format("pointcloud", "ziqipang/LM4VisualEncoding pointcloud_classification/tools/builder.py "
                         "save_checkpoint (Point-BERT)", "base_model",
                         frozenset({"base_model", "optimizer", "epoch", "metrics", "best_metrics"}), False),
}


@dataclass
class AuthorsCheckpoint:
    """What an authors' checkpoint holds that the import uses (the optimizer state is never used)."""

    path: Path
    format: Format
    state: dict[str, Tensor]  # the chosen weights, 'module.' removed
    args: dict[str, Any] | None  # vars(args) of the image/video formats
    epoch: Any
    weights_key: str  # 'model', 'model_ema' or 'base_model'
    extra: dict[str, Any] = field(default_factory=dict)  # JSON-able facts for meta.json (metrics, ignored keys)


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)", re.I)


def load_weights_only(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` with :data:`SAFE_GLOBALS` allowed; a file that needs any
    other global raises CheckpointError naming it (the unpickler stops before anything is executed)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e) and "zip" not in str(e).lower():
                    raise
                # torch.save files of torch < 1.6 are not zip archives and cannot be memory-mapped.
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
        m = _GLOBAL.search(msg)
        what = f"the global {m.group(1)}" if m else "an object weights-only loading does not allow"
        allowed = ", ".join(f"{c.__module__}.{c.__qualname__}" for c in SAFE_GLOBALS)
        raise CheckpointError(
            f"{path}: refused to load: the file needs {what}, which the authors' checkpoint formats never contain "
            f"(allowed besides tensors and plain data: {allowed}). Unpickling it could run arbitrary code, so it "
            f"was not unpickled. If you trust the file, re-save only its weights in a trusted environment, e.g. "
            f"torch.save({{'model': ckpt['model'], 'args': ckpt['args']}}, 'clean.pth')") from None
    except (RuntimeError, EOFError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read {path}: {first} (truncated download, or not a torch checkpoint?)") from None


def _strip_module(sd: dict[str, Any], path: Path) -> dict[str, Tensor]:
    """Remove the (Distributed)DataParallel ``module.`` prefix; refuse non-tensors and keys it would merge."""
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: the state dict holds entries that are not tensors: {bad[:8]}")
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        name = k[len("module."):] if k.startswith("module.") else k
        if name in out:
            raise CheckpointError(f"{path}: {k!r} and {name!r} would both become {name!r} once the DataParallel "
                                  f"prefix 'module.' is removed; the state dict is inconsistent")
        out[name] = v
    return out


def _plain(v: Any) -> Any:
    """A JSON-able copy of an args value or a metric (tensors become numbers or shapes)."""
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, Tensor):
        return v.item() if v.numel() == 1 else f"tensor{tuple(v.shape)}"
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return str(v)


def read_authors_checkpoint(path: str | Path, task: str, weights: str = "model") -> AuthorsCheckpoint:
    """Read an authors' checkpoint of ``task`` ('image', 'video' or 'pointcloud').

    ``weights``: 'model' (the trained weights, what the authors evaluate) or 'ema' (``model_ema``, where
    the image/video formats hold one). A file of another format is refused with a hint at the right task.
    """
    if task not in FORMATS:
        raise CheckpointError(f"unknown authors' format {task!r}; expected one of {sorted(FORMATS)}")
    fmt, path = FORMATS[task], Path(path).expanduser()
    obj = load_weights_only(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected the dict the authors' {task} code saves ({fmt.spec}), "
                              f"got a {type(obj).__name__}")
    key = fmt.weights
    if weights == "ema":
        if task == "pointcloud":
            raise CheckpointError("--weights ema: the authors' Point-BERT checkpoints hold no EMA weights")
        key = "model_ema"
    elif weights != "model":
        raise CheckpointError(f"weights must be 'model' or 'ema', got {weights!r}")
    if key not in obj or not isinstance(obj[key], dict):
        hint = next((f"; it looks like the {t} format: use --task {t}" for t, f in FORMATS.items()
                     if t != task and f.weights in obj and set(obj) <= f.keys), "")
        raise CheckpointError(f"{path}: no {key!r} state dict (top-level keys: {sorted(map(str, obj))}); the authors' "
                              f"{task} checkpoints ({fmt.spec}) have {sorted(fmt.keys)}{hint}")
    ignored = sorted(str(k) for k in obj if k not in fmt.keys)
    if ignored:
        warnings.warn(f"{path}: top-level keys the authors' {task} format does not write are ignored: {ignored}",
                      stacklevel=2)
    args = obj.get("args")
    if fmt.has_args and args is not None and not isinstance(args, argparse.Namespace):
        raise CheckpointError(f"{path}: 'args' is a {type(args).__name__}, not the argparse.Namespace {fmt.spec} saves")
    extra = {k: _plain(obj[k]) for k in ("metrics", "best_metrics") if k in obj}
    if ignored:
        extra["ignored_keys"] = ignored
    return AuthorsCheckpoint(path=path, format=fmt, state=_strip_module(obj[key], path),
                             args={k: _plain(v) for k, v in vars(args).items()} if args is not None else None,
                             epoch=_plain(obj.get("epoch")), weights_key=key, extra=extra)
