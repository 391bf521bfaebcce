"""Exponential moving average of the trainable weights (DeiT keeps one; the raw model is scored)."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

__all__ = ["ModelEma"]


class ModelEma:
    """EMA of ``requires_grad`` parameters only: frozen blocks never change, so copying them is waste."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema.decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow = {n: p.detach().clone().float() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow = decay * shadow + (1 - decay) * weights."""
        for n, p in model.named_parameters():
            if n in self.shadow:
                self.shadow[n].lerp_(p.detach().float(), 1.0 - self.decay)

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily put the EMA weights into ``model`` (for evaluation)."""
        params = dict(model.named_parameters())
        backup = {n: params[n].detach().clone() for n in self.shadow}
        with torch.no_grad():
            for n, t in self.shadow.items():
                params[n].copy_(t)
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, t in backup.items():
                    params[n].copy_(t)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Shadow weights by parameter name."""
        return {n: t.cpu() for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore shadow weights; keys must match the trainable parameters."""
        if set(state) != set(self.shadow):
            diff = sorted(set(state) ^ set(self.shadow))
            raise ValueError(f"EMA state does not match the model's trainable parameters: {diff}")
        for n, t in state.items():
            self.shadow[n].copy_(t)
