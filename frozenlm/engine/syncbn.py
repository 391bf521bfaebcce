"""Batch norm over the global batch of all ranks, on any device (torch's SyncBatchNorm refuses CPU).

Under DDP each rank sees 1/N of the global batch; plain BatchNorm would normalise with per-rank
statistics and train another model than 1 process does. :func:`convert_sync_batchnorm` swaps every
BatchNorm for :class:`torch.nn.SyncBatchNorm` on CUDA and for :class:`GlobalBatchNorm` elsewhere,
keeping the same Parameter and buffer objects (an optimizer built before stays valid) and the same
state-dict keys (checkpoints load in 1-process runs and vice versa).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["GlobalBatchNorm", "convert_sync_batchnorm"]


def _reduce_dims(x: Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


def _per_channel(v: Tensor, x: Tensor) -> Tensor:
    return v.view(1, -1, *([1] * (x.dim() - 2)))


class _GlobalBatchNormFn(torch.autograd.Function):
    """Forward: global mean/variance from one all_reduce; backward: all_reduce of the two gradient
    sums, as torch's SyncBatchNorm does. Weight/bias grads stay local: DDP averages them."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                running_mean: Optional[Tensor], running_var: Optional[Tensor], eps: float, momentum: float,
                group: Any) -> Tensor:
        xf, c = x.float(), x.shape[1]
        dims = _reduce_dims(x)
        n_local = x.numel() // c
        if n_local:
            var_l, mean_l = torch.var_mean(xf, dim=dims, correction=0)
        else:  # an empty rank still has to join the collective
            var_l = mean_l = xf.new_zeros(c)
        # Per-rank (count*mean, count*mean^2, centred sum of squares) merge exactly (Chan et al.);
        # float64 keeps the between-rank term free of cancellation.
        n = float(n_local)
        m = mean_l.double()
        packed = torch.cat([n * m, n * m * m, n * var_l.double(), m.new_tensor([n])])
        dist.all_reduce(packed, group=group)
        s1, s2, m2, total = packed[:c], packed[c:2 * c], packed[2 * c:3 * c], float(packed[-1])
        if total <= 1:
            raise ValueError(f"BatchNorm needs more than 1 value per channel over all ranks when training, "
                             f"got {int(total)} (input shape {tuple(x.shape)} on this rank)")
        mean = s1 / total
        var = ((m2 + s2 - total * mean * mean) / total).clamp_min(0.0)
        if running_mean is not None and running_var is not None:
            # as nn.BatchNorm on the whole global batch: the unbiased variance goes into running_var
            running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1.0 - momentum).add_((var * total / (total - 1)).to(running_var.dtype), alpha=momentum)
        mean_f, invstd = mean.float(), (var + eps).rsqrt().float()
        xhat = (xf - _per_channel(mean_f, x)) * _per_channel(invstd, x)
        ctx.save_for_backward(xhat, weight, invstd)
        ctx.total, ctx.group = total, group
        ctx.bias_dtype = bias.dtype if bias is not None else None
        y = xhat if weight is None else xhat * _per_channel(weight.float(), x)
        if bias is not None:
            y = y + _per_channel(bias.float(), x)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Optional[Tensor], ...]:
        xhat, weight, invstd = ctx.saved_tensors
        g = grad_out.float()
        dims = _reduce_dims(g)
        sum_dy, sum_dy_xhat = g.sum(dims), (g * xhat).sum(dims)
        grad_w = sum_dy_xhat.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        grad_b = sum_dy.to(ctx.bias_dtype) if ctx.needs_input_grad[2] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            # every rank's loss depends on every rank's input through the shared statistics
            sums = torch.cat([sum_dy, sum_dy_xhat]).double()
            dist.all_reduce(sums, group=ctx.group)
            c = g.shape[1]
            mean_dy, mean_dy_xhat = (sums[:c] / ctx.total).float(), (sums[c:] / ctx.total).float()
            scale = invstd if weight is None else invstd * weight.float()
            grad_x = (g - _per_channel(mean_dy, g) - xhat * _per_channel(mean_dy_xhat, g)) * _per_channel(scale, g)
            grad_x = grad_x.to(grad_out.dtype)
        return grad_x, grad_w, grad_b, None, None, None, None, None


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover the global batch of every rank (CPU/gloo capable).

    Same parameters, buffers and state-dict keys as ``nn.BatchNorm1d/2d/3d``. Without an initialised
    process group of more than one rank, or in eval mode, it is plain batch norm.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group: Any = None, device: Any = None,
                 dtype: Any = None, *, bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype,
                         bias=bias)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (N, C, ...), got {input.dim()}D input")

    def _world(self) -> int:
        if not (dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.process_group or dist.group.WORLD)

    def forward(self, input: Tensor) -> Tensor:
        """(N, C, *) -> (N, C, *), normalised with the statistics of all ranks' batches when training."""
        if not self.training or self._world() < 2:
            return super().forward(input)
        self._check_input_dim(input)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as _BatchNorm
                momentum = 1.0 / float(self.num_batches_tracked)
        track = self.track_running_stats
        return _GlobalBatchNormFn.apply(input, self.weight, self.bias, self.running_mean if track else None,
                                        self.running_var if track else None, self.eps, momentum,
                                        self.process_group or dist.group.WORLD)


def convert_sync_batchnorm(module: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """Replace every ``nn.BatchNorm*`` in ``module`` by a synchronised one: torch's
    ``SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm` otherwise.

    The new layers reuse the old Parameter and buffer objects, so an optimizer or EMA built on
    ``module`` keeps working; returns ``module`` itself unless ``module`` is a BatchNorm.
    """
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, (GlobalBatchNorm, nn.SyncBatchNorm)):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats, bias=module.bias is not None)
        # reuse the objects (not copies): the optimizer, the EMA and DDP see the same tensors
        out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, device))
    return out
