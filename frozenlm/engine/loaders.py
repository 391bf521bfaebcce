"""A task's data loaders for one split (global batch split over ranks) and batches moved to the device."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch.utils.data import DataLoader

from frozenlm.config import Config
from frozenlm.engine.data import build_loader
from frozenlm.engine.distributed import DistInfo
from frozenlm.tasks.base import Task

__all__ = ["task_loader", "to_device"]


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
