"""The Task protocol (what a task supplies to the engine) and helpers every task shares."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

__all__ = ["Task", "EvalContext", "model_kwargs"]


@dataclass
class EvalContext:
    """What a task's own ``evaluate`` gets besides the model and its batches: the split's dataset, the
    device, this process's ``rank`` among ``world_size``, and ``gather(x)``, which returns every rank's
    ``x`` (first dimensions may differ), in rank order. Every rank must call ``gather`` equally often."""

    dataset: Any
    device: torch.device
    rank: int = 0
    world_size: int = 1
    gather: Callable[[Tensor], list[Tensor]] = field(default=lambda x: [x])


class Task:
    """Interface a task implements (subclassing is optional; duck typing is enough).

    The engine builds a fresh task object for every run, so per-run state may live on it.
    ``eval_batch`` returns SUMS (counts, summed losses, per-class vectors...). The engine adds them
    over batches and all-reduces them over ranks before ``finalize`` turns them into metrics, so
    metrics are exact regardless of batch size or world size. A task whose metrics need the whole
    split at once (retrieval ranks every caption against every image) implements ``evaluate`` instead.

    ``primary_metric`` names the validation metric that picks ``checkpoints/best`` when the config
    sets no ``best_metric``, and ``primary_mode`` says whether higher ("max") or lower ("min") is better.
    """

    primary_metric: str = ""
    primary_mode: str = "max"
    #: Every config key the task reads beyond the engine's (dotted names, ``a.*`` = open mapping).
    #: Unknown keys are refused; a task that leaves this as None gets its own sections unchecked.
    config_keys: Optional[tuple[str, ...]] = None
    #: Optional ``evaluate(model, batches, cfg, ctx: EvalContext) -> metrics``: replaces eval_batch +
    #: finalize for one split. ``batches`` are this rank's share of the split, already on ``ctx.device``;
    #: the returned metrics must be the same on every rank.
    evaluate: Optional[Callable[..., dict[str, float]]] = None

    def build_model(self, cfg: Any) -> nn.Module:
        """Build the model (frozen LM blocks included) on CPU."""
        raise NotImplementedError

    def build_dataset(self, cfg: Any, split: str) -> Optional[Dataset]:
        """Dataset for ``split`` ("train", "val", maybe "test"); ``None`` if the split does not exist."""
        raise NotImplementedError

    def train_step_loss(self, model: nn.Module, batch: Any, cfg: Any) -> Tensor:
        """Scalar training loss for one micro-batch (already on the device). Mixup etc. go here."""
        raise NotImplementedError

    def eval_batch(self, model: nn.Module, batch: Any, cfg: Any) -> dict[str, Tensor]:
        """Per-batch sums (e.g. ``correct1``, ``count``, ``loss_sum``)."""
        raise NotImplementedError

    def finalize(self, sums: dict[str, Tensor], cfg: Any) -> dict[str, float]:
        """Turn globally summed values into metrics (``primary_metric`` must be among them)."""
        raise NotImplementedError

    def collate_fn(self, cfg: Any, split: str) -> Optional[Callable]:
        """Optional custom collate function; ``None`` = PyTorch's default."""
        return None

    def lr_mults(self, model: nn.Module, cfg: Any) -> Optional[dict[str, float]]:
        """Optional LR multipliers, ``{parameter-name prefix, substring or full name: multiplier}`` (longest
        match wins); the engine multiplies them into its own groups. ``None`` = none."""
        return None


def model_kwargs(cfg: Any, drop: Iterable[str] = (), **defaults: Any) -> dict[str, Any]:
    """Arguments of ``create_model`` from the config's ``model:`` section: ``name`` and the task-only keys in
    ``drop`` removed, and each key of ``defaults`` (e.g. ``num_classes`` from the data) filled in where the
    model section leaves it null or out. A default of ``None`` fills nothing (the factory's own applies)."""
    m = {k: v for k, v in dict(cfg.model).items() if k != "name" and k not in set(drop)}
    for k, v in defaults.items():
        if m.get(k) is None and v is not None:
            m[k] = v
    return m
