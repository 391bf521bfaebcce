"""Exponential moving average of a model (DeiT keeps one; the raw model is scored).

Follows ``timm.utils.ModelEmaV3`` (default ``exclude_buffers=False``): every floating-point entry
of the state dict, parameters and buffers (BatchNorm running statistics) alike, is lerped;
integer buffers (``num_batches_tracked``) are copied. Frozen language-model blocks are left out:
they never change, so averaging them would only cost memory.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from frozenlm.layer import frozen_param_names

__all__ = ["ModelEma"]


def _tracked(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters and persistent buffers by state-dict name, frozen LM blocks excluded."""
    skip = frozen_param_names(model)
    persistent = set(model.state_dict().keys())  # non-persistent buffers are rebuilt, never saved
    out = {n: p for n, p in model.named_parameters() if p.requires_grad and n not in skip}
    out.update({n: b for n, b in model.named_buffers() if n in persistent and n not in skip})
    return out


class ModelEma:
    """EMA of the trainable parameters and buffers of ``model`` (float32 shadow for float tensors)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema.decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.buffer_names = {n for n, _ in model.named_buffers()}
        self.shadow = {n: (t.detach().clone().float() if t.is_floating_point() else t.detach().clone())
                       for n, t in _tracked(model).items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow = decay * shadow + (1 - decay) * value for float tensors; integer buffers are copied."""
        for n, t in _tracked(model).items():
            s = self.shadow.get(n)
            if s is None:
                continue
            if s.is_floating_point():
                s.lerp_(t.detach().float(), 1.0 - self.decay)
            else:
                s.copy_(t)

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily put the EMA weights and buffers into ``model`` (for evaluation)."""
        live = _tracked(model)
        backup = {n: live[n].detach().clone() for n in self.shadow}
        with torch.no_grad():
            for n, t in self.shadow.items():
                live[n].copy_(t)
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, t in backup.items():
                    live[n].copy_(t)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Shadow tensors by state-dict name (parameters and buffers)."""
        return {n: t.cpu() for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], where: str = "the checkpoint") -> None:
        """Restore the shadow; keys must be exactly the model's trainable parameters and buffers.

        An EMA saved before buffers were tracked (no BatchNorm statistics) is refused: its running
        statistics would silently be those of the initial model.
        """
        missing, unexpected = sorted(set(self.shadow) - set(state)), sorted(set(state) - set(self.shadow))
        if missing and not unexpected and set(missing) <= self.buffer_names:
            raise ValueError(
                f"the EMA in {where} has no buffers ({len(missing)} missing, e.g. {missing[0]!r}): it was written "
                "by a frozenlm whose EMA skipped buffers (BatchNorm running statistics), so it cannot be restored "
                "exactly. Resume with ema.decay=null (drops the EMA) or evaluate with ema.eval=false")
        if missing or unexpected:
            raise ValueError(f"the EMA in {where} does not match the model: missing {missing}, "
                             f"unexpected {unexpected}")
        for n, t in state.items():
            if t.shape != self.shadow[n].shape:
                raise ValueError(f"the EMA in {where}: {n!r} has shape {tuple(t.shape)}, "
                                 f"the model {tuple(self.shadow[n].shape)}")
            self.shadow[n].copy_(t)
