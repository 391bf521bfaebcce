"""torchrun-based distributed setup (gloo on CPU, nccl on CUDA) and clean shutdown."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from frozenlm.engine.syncbn import convert_sync_batchnorm

__all__ = ["DistInfo", "init_distributed", "shutdown_distributed", "all_reduce_sums", "broadcast_object",
           "resolve_device", "wrap_ddp"]


@dataclass
class DistInfo:
    """Process placement: ``rank`` / ``world_size`` / ``local_rank`` and whether we own the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's CUDA device if available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device: cuda was requested but CUDA is not available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise ValueError(f"device must be auto, cpu or cuda; got {name!r}")
    return torch.device("cpu")


def init_distributed(backend: str, device: torch.device) -> DistInfo:
    """Join the process group announced by torchrun's env vars (WORLD_SIZE > 1); no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        return DistInfo()
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, owns_group=False)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ValueError("distributed.backend nccl needs CUDA; use gloo (or auto) on CPU")
    kwargs: dict[str, Any] = {"backend": backend}
    if device.type == "cuda":
        kwargs["device_id"] = device
    dist.init_process_group(**kwargs)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, owns_group=True)


def wrap_ddp(model: nn.Module, device: torch.device,
             find_unused_parameters: bool = False) -> tuple[nn.Module, DistributedDataParallel]:
    """Synchronise ``model``'s BatchNorm layers over the ranks, then wrap it in DDP.

    Per-rank BatchNorm statistics would make N processes train another model than 1 process with
    the same global batch. The conversion keeps the Parameter and buffer objects, so an optimizer
    or EMA built on ``model`` stays valid, and the state-dict keys. Returns (model, ddp); ``model``
    is a new object only if it is itself a BatchNorm layer.
    """
    model = convert_sync_batchnorm(model, device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                  find_unused_parameters=find_unused_parameters)
    return model, ddp


def shutdown_distributed(info: DistInfo) -> None:
    """Barrier + destroy the group we created, and flush.

    Distributed CLI runs then end with ``os._exit`` (cli.py): it avoids a gloo teardown race seen
    here (a rank sometimes aborts with "terminate called without an active exception" during
    interpreter shutdown), and only entry points may skip atexit handlers.
    """
    if info.owns_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()


def all_reduce_sums(sums: dict[str, torch.Tensor], info: DistInfo,
                    device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Sum each tensor over ranks. A rank that saw no batch (tiny eval set) contributes zeros."""
    if not info.enabled:
        return sums
    specs: list[Any] = [None] * info.world_size
    dist.all_gather_object(specs, {k: (tuple(v.shape), v.dtype) for k, v in sums.items()})
    union: dict[str, Any] = {}
    for s in specs:
        union.update(s)
    device = device or next((v.device for v in sums.values()), torch.device("cpu"))
    for key, (shape, dtype) in union.items():
        if key not in sums:
            sums[key] = torch.zeros(shape, dtype=dtype, device=device)
    for key in sorted(sums):
        dist.all_reduce(sums[key], op=dist.ReduceOp.SUM)
    return sums


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
