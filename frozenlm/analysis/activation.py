"""Magnitude and frequency activations of patch tokens, exactly as method.md section 5 defines them."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .features import Capture

KINDS: tuple[str, ...] = ("magnitude", "frequency")


def _batched(tokens: Tensor) -> tuple[Tensor, bool]:
    if tokens.dim() == 2:
        return tokens.unsqueeze(0), True
    if tokens.dim() != 3:
        raise ValueError(f"expected tokens (B, N, C) or (N, C), got shape {tuple(tokens.shape)}")
    return tokens, False


def minmax(a: Tensor, eps: float = 1e-12, scale: Tensor | float | None = None, rtol: float = 1e-5) -> Tensor:
    """Min-max each row of (B, N) to [0, 1]; a constant row becomes all zeros (no division by zero).

    A row whose spread is below ``rtol * scale`` (``scale``: the input's magnitude, broadcastable
    to (B, 1)) also counts as constant: min-max would otherwise blow float round-off up to [0, 1].
    """
    lo = a.min(-1, keepdim=True).values
    hi = a.max(-1, keepdim=True).values
    span = hi - lo
    tol = torch.full_like(span, eps)
    if scale is not None:
        tol = torch.maximum(tol, rtol * torch.as_tensor(scale, dtype=span.dtype, device=span.device))
    return torch.where(span > tol, (a - lo) / span.clamp_min(eps), torch.zeros_like(a))


def magnitude_activation(tokens: Tensor) -> Tensor:
    """Patch tokens (B, N, C) -> (B, N): ||z_i - mean_j z_j||_2, min-max to [0, 1] per image."""
    z, squeeze = _batched(tokens.float())
    scale = z.norm(dim=-1).amax(-1, keepdim=True)
    a = minmax((z - z.mean(1, keepdim=True)).norm(dim=-1), scale=scale)
    return a[0] if squeeze else a


def frequency_activation(tokens: Tensor) -> Tensor:
    """Patch tokens (B, N, C) -> (B, N): phase of the FFT over channels, minus the mean phase
    vector over tokens, L2 norm over channels, min-max to [0, 1] per image."""
    z, squeeze = _batched(tokens.float())
    # float64 FFT: the phase of near-zero bins is otherwise dominated by float32 round-off.
    phase = torch.angle(torch.fft.fft(z.double(), dim=-1))
    # Phase differences live on the scale pi * sqrt(C); below rtol of that they are round-off.
    a = minmax((phase - phase.mean(1, keepdim=True)).norm(dim=-1), scale=math.pi * math.sqrt(z.shape[-1])).float()
    return a[0] if squeeze else a


def to_grid(act: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, N) -> (B, h, w) in row-major patch order (timm's flatten order)."""
    h, w = grid
    if act.shape[-1] != h * w:
        raise ValueError(f"{act.shape[-1]} patch activations do not fill a {h}x{w} grid")
    return act.reshape(*act.shape[:-1], h, w)


def activation_maps(cap: "Capture", kind: str = "magnitude") -> dict[str, Tensor]:
    """{stage: (B, h, w) activation in [0, 1]} from a Capture, using patch tokens only."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    fn = magnitude_activation if kind == "magnitude" else frequency_activation
    p = cap.num_prefix_tokens
    return {name: to_grid(fn(t[:, p:]), cap.grid) for name, t in cap.stages.items()}


def attention_map(cap: "Capture") -> Tensor | None:
    """CLS -> patch attention summed over heads, min-max to [0, 1], (B, h, w); None if absent."""
    a = cap.attention
    return None if a is None else to_grid(minmax(a.float()), cap.grid)
