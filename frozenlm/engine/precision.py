"""Mixed precision: fp32, bf16 (autocast on CPU or CUDA), fp16 (CUDA only, with a GradScaler)."""
from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch

__all__ = ["check_precision", "resolve_precision", "cpu_has_bf16", "autocast", "make_scaler"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX); without it bf16 is ~100x slower."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on CUDA and on CPUs with native bf16, else fp32; other values unchanged."""
    if precision != "auto":
        return precision
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()):
        return "bf16"
    return "fp32"


def check_precision(precision: str, device: torch.device) -> None:
    """Reject unknown values and fp16 on CPU (about 400x slower than bf16 on CPUs like this one)."""
    if precision not in ("fp32", "bf16", "fp16", "auto"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16; got {precision!r}")
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
