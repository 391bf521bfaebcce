"""Mixed precision: fp32, bf16 (autocast on CPU or CUDA), fp16 (CUDA only, with a GradScaler)."""
from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch

__all__ = ["check_precision", "autocast", "make_scaler"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """Reject unknown values and fp16 on CPU (about 400x slower than bf16 on CPUs like this one)."""
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16; got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 is only supported on CUDA (on CPU it is ~400x slower than bf16); "
                         "use precision=bf16 or precision=fp32")


def autocast(precision: str, device: torch.device) -> ContextManager:
    """The autocast context for ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def make_scaler(precision: str, device: torch.device) -> Optional[torch.amp.GradScaler]:
    """A GradScaler for fp16 (bf16 has fp32's range and needs none)."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
