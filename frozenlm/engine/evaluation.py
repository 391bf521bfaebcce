"""Evaluation: one split through the task's sums (``eval_batch`` + ``finalize``) or its own ``evaluate``
hook, on every rank; and ``evaluate(checkpoint)``, the library entry point of ``frozenlm eval``."""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn

from frozenlm.config import Config
from frozenlm.engine import checkpoint as ckpt
from frozenlm.engine.distributed import DistInfo, all_reduce_sums, shutdown_distributed
from frozenlm.engine.ema import ModelEma
from frozenlm.engine.precision import autocast
from frozenlm.engine.runtime import start_run, task_loader, to_device
from frozenlm.engine.rng import preserved_rng
from frozenlm.engine.trained import rebuild_trained
from frozenlm.tasks.base import EvalContext, Task

__all__ = ["run_eval", "gather_rows", "evaluate"]


def gather_rows(x: torch.Tensor, info: DistInfo, device: torch.device) -> list[torch.Tensor]:
    """Every rank's ``x`` (same trailing shape and dtype, any first dimension), in rank order, on ``device``."""
    x = x.to(device)
    if not info.enabled:
        return [x]
    n = torch.tensor([x.shape[0]], device=device)
    sizes = [torch.zeros_like(n) for _ in range(info.world_size)]
    dist.all_gather(sizes, n)
    padded = x.new_zeros((int(max(sizes)), *x.shape[1:]))  # all_gather needs equal shapes
    padded[: len(x)] = x
    out = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(out, padded)
    return [o[: int(s)] for o, s in zip(out, sizes)]


def run_eval(task: Task, model: nn.Module, loader: Any, cfg: Config, info: DistInfo,
             device: torch.device) -> dict[str, float]:
    """Metrics of the loader's split, the same on every rank: the task's ``evaluate`` hook if it has one,
    else ``task.eval_batch`` summed over the loader and all ranks, then ``task.finalize``."""
    was_training = model.training
    model.eval()
    loader.sampler.set_epoch(0)
    hook = getattr(task, "evaluate", None)
    with preserved_rng(), torch.no_grad():
        if hook is not None:
            ctx = EvalContext(loader.dataset.dataset, device, info.rank, info.world_size,
                              partial(gather_rows, info=info, device=device))
            with autocast(cfg.precision, device):
                metrics = hook(model, (to_device(b, device) for b in loader), cfg, ctx)
        else:
            sums: dict[str, torch.Tensor] = {}
            for batch in loader:
                with autocast(cfg.precision, device):
                    out = task.eval_batch(model, to_device(batch, device), cfg)
                for k, v in out.items():
                    v = torch.as_tensor(v).detach().to(device)
                    v = v.double() if v.is_floating_point() else v.long()
                    sums[k] = sums[k] + v if k in sums else v
            sums = all_reduce_sums(sums, info, device)
            metrics = task.finalize({k: v.cpu() for k, v in sums.items()}, cfg)
    model.train(was_training)
    return dict(metrics)


def evaluate(checkpoint_dir: str | Path, overrides: Sequence[str] = ()) -> dict[str, float]:
    """Rebuild the model from a checkpoint's saved config (plus ``overrides``, e.g.
    ``eval_split=test``), load its weights and evaluate; adds ``ema_*`` metrics if ``ema.eval``."""
    task, model, cfg, path = rebuild_trained(checkpoint_dir, overrides)
    info, device = start_run(cfg)
    model.to(device)
    ds = task.build_dataset(cfg, cfg.eval_split)
    if ds is None:
        raise ValueError(f"task {cfg.task!r} has no {cfg.eval_split!r} split")
    loader = task_loader(task, ds, cfg, info, device, cfg.eval_split, False)
    metrics = run_eval(task, model, loader, cfg, info, device)
    if cfg.ema.eval:
        state = ckpt.load_train_state(path)
        if state.get("ema"):
            ema = ModelEma(model, cfg.ema.decay or 0.5)
            ema.load_state_dict(state["ema"], where=str(path))
            with ema.swapped_in(model):
                metrics.update({f"ema_{k}": v for k, v in run_eval(task, model, loader, cfg, info, device).items()})
    shutdown_distributed(info)
    return metrics
