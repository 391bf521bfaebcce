"""What training and evaluation runs share around their loops: the process's device and place in the
process group, a task's loader for one split (the global batch split over ranks), batches on the device."""
from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from torch.utils.data import DataLoader

from frozenlm.config import Config
from frozenlm.engine.data import build_loader
from frozenlm.engine.distributed import DistInfo, init_distributed, resolve_device
from frozenlm.engine.precision import check_precision, resolve_precision
from frozenlm.tasks.base import Task

__all__ = ["resolve_frozen_dtype", "start_run", "task_loader", "to_device"]


def start_run(cfg: Config) -> tuple[DistInfo, torch.device]:
    """This process's place in the torchrun process group (joined if WORLD_SIZE > 1) and its device;
    ``cfg.precision`` is resolved for the device."""
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    check_precision(cfg.precision, device)
    cfg.precision = resolve_precision(cfg.precision, device)
    resolve_frozen_dtype(cfg)
    return init_distributed(cfg.distributed.backend, device), device


def resolve_frozen_dtype(cfg: Any) -> None:
    """Replace every ``frozen_dtype: auto`` in ``cfg`` by bfloat16 if the run computes in bf16, else null
    (float32), so the run's saved config and its frozen digests name the dtype actually stored."""
    value = "bfloat16" if cfg.precision == "bf16" else None

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            for k in list(node):
                if k == "frozen_dtype" and node[k] == "auto":
                    node[k] = value
                else:
                    walk(node[k])
    walk(cfg)


def task_loader(task: Task, ds: Any, cfg: Config, info: DistInfo, device: torch.device, split: str,
                train: bool) -> DataLoader:
    """Training loader (shuffled, ``batch_size`` split over ranks and accumulation steps, repeated
    augmentation) or evaluation loader (in order, nothing dropped) of ``ds`` with the task's collate."""
    if train:
        gb, micro = cfg.batch_size, cfg.batch_size // (info.world_size * cfg.accum_steps)
    else:
        gb = cfg.eval_batch_size or cfg.batch_size
        micro = max(1, gb // info.world_size)
    return build_loader(ds, global_batch=gb, micro_batch=micro, rank=info.rank, world_size=info.world_size,
                        seed=cfg.seed, shuffle=train, drop_last=train, num_workers=cfg.num_workers,
                        collate_fn=task.collate_fn(cfg, split) if hasattr(task, "collate_fn") else None,
                        pin_memory=device.type == "cuda", repeats=int(cfg.repeated_aug or 1) if train else 1)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [to_device(v, device) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch
