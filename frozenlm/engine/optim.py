"""AdamW parameter groups (timm/DeiT weight-decay rules, LR multipliers) and the LR schedule."""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional

import torch
from torch import nn

__all__ = ["param_groups", "build_optimizer", "base_lr", "lr_at", "step_lr", "schedule_lr", "set_lr"]


def _no_decay_names(model: nn.Module, cfg: Any) -> set[str]:
    names = set(cfg.optim.get("no_weight_decay") or [])
    # timm convention: a model lists its own names (e.g. pos_embed) in no_weight_decay().
    fn = getattr(model, "no_weight_decay", None)
    if callable(fn):
        names |= set(fn())
    return names


def _lr_mult(name: str, table: dict[str, float]) -> float:
    # Longest matching pattern wins, so "lm_layer.proj" can refine "lm_layer.".
    hits = [p for p in table if name.startswith(p) or p in name]
    return float(table[max(hits, key=len)]) if hits else 1.0


def param_groups(model: nn.Module, cfg: Any, task_mults: Optional[Mapping[str, float]] = None) -> list[dict]:
    """Trainable parameters grouped by (weight decay, LR multiplier).

    No decay for 1-D tensors (norms, biases) and names matching ``optim.no_weight_decay`` or the
    model's ``no_weight_decay()``. A parameter's LR multiplier is the product of its ``optim.lr_mult``
    match, ``optim.no_decay_lr_mult`` if it has no decay, and its ``task_mults`` match (a task's
    ``lr_mults``: adapters, per-module or layer-wise rates); in both tables the longest pattern that
    starts or occurs in the name wins. Frozen parameters (``requires_grad=False``) are left out.
    """
    skip = _no_decay_names(model, cfg)
    table = dict(cfg.optim.get("lr_mult") or {})
    task_table = dict(task_mults or {})
    nd_mult = float(cfg.optim.get("no_decay_lr_mult", 1.0) or 1.0)
    wd = float(cfg.optim.weight_decay)
    groups: dict[tuple[float, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name in skip or any(s in name.split(".") or name.endswith(s) for s in skip)
        mult = _lr_mult(name, table) * (nd_mult if no_decay else 1.0) * _lr_mult(name, task_table)
        key = (0.0 if no_decay else wd, mult)
        g = groups.setdefault(key, {"params": [], "weight_decay": key[0], "lr_mult": mult, "param_names": []})
        g["params"].append(p)
        g["param_names"].append(name)
    if not groups:
        raise ValueError("the model has no trainable parameters (all requires_grad=False)")
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: Any, task_mults: Optional[Mapping[str, float]] = None
                    ) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups`; group LRs are set per step by :func:`set_lr`."""
    name = str(cfg.optim.get("name", "adamw")).lower()
    if name != "adamw":
        raise ValueError(f"unsupported optimizer {name!r}; supported: adamw")
    return torch.optim.AdamW(param_groups(model, cfg, task_mults), lr=base_lr(cfg), betas=tuple(cfg.optim.betas),
                             eps=float(cfg.optim.eps), weight_decay=float(cfg.optim.weight_decay))


def base_lr(cfg: Any) -> float:
    """Peak LR, scaled by ``batch_size / optim.lr_scale_batch`` when that is set (DeiT rule)."""
    lr = float(cfg.optim.lr)
    ref = cfg.optim.get("lr_scale_batch")
    return lr * int(cfg.batch_size) / float(ref) if ref else lr


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, min_lr: float,
          warmup_lr: float = 0.0) -> float:
    """LR for optimizer step ``step`` (0-based): linear warmup from ``warmup_lr`` to ``peak`` over
    ``warmup_steps``, then cosine to ``min_lr`` at ``total_steps``. Stateless, so resume is exact."""
    if step < warmup_steps:
        return warmup_lr + (peak - warmup_lr) * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def step_lr(step: int, steps_per_epoch: int, warmup_steps: int, peak: float, milestones: Iterable[float],
            gamma: float = 0.1, warmup_lr: float = 0.0) -> float:
    """Step decay: linear warmup, then ``peak * gamma**k`` where k counts the ``milestones`` (epochs)
    already reached (SQA3D's recipe: LR / 10 at epochs 10, 15 and 20)."""
    if step < warmup_steps:
        return warmup_lr + (peak - warmup_lr) * step / warmup_steps
    epoch = step / max(1, steps_per_epoch)
    return peak * gamma ** sum(epoch >= float(m) for m in milestones)


def schedule_lr(optim_cfg: Any, step: int, total_steps: int, warmup_steps: int, steps_per_epoch: int,
                peak: float) -> float:
    """LR of ``optim.schedule``: ``cosine`` (default, :func:`lr_at`) or ``step`` (:func:`step_lr` with
    ``optim.milestones`` and ``optim.gamma``)."""
    kind = optim_cfg.get("schedule", "cosine") or "cosine"
    warm = float(optim_cfg.get("warmup_lr", 0.0))
    if kind == "cosine":
        return lr_at(step, total_steps, warmup_steps, peak, float(optim_cfg.get("min_lr", 0.0)), warm)
    if kind == "step":
        return step_lr(step, steps_per_epoch, warmup_steps, peak, optim_cfg.get("milestones") or [],
                       float(optim_cfg.get("gamma", 0.1)), warm)
    raise ValueError(f"optim.schedule must be 'cosine' or 'step', got {kind!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's LR to ``lr * group['lr_mult']``."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
