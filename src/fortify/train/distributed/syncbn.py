"""Synchronised batch normalisation for data-parallel training on any backend (gloo included).

``torch.nn.SyncBatchNorm`` runs on GPUs only and replaces modules; here every BatchNorm of the model
gets a pair of hooks for the duration of a data-parallel fit (removed afterwards, the model's
structure and state-dict keys never change). In training mode the forward hook recomputes the
module's output with the *global* batch statistics (Ioffe & Szegedy 2015, Eq. 1, over all ranks'
rows, as PyTorch's SyncBatchNorm and Peng et al. 2018 "MegDet"):

    S = all_reduce(sum_i x_i), Q = all_reduce(sum_i x_i^2), M = all_reduce(m)   per channel
    mean = S / M,  var = Q / M - mean^2,  y = (x - mean) / sqrt(var + eps) * gamma + beta

with a differentiable all-reduce (:class:`AllReduceSum`: its backward all-reduces the gradient of
the statistics, so every rank gets the exact gradient of the global loss when shards are
equal-sized - the case PyTorch's DDP + SyncBatchNorm also assumes). The running statistics are
restored to their value before the local forward and updated once with the global ``mean`` and the
unbiased global variance ``var * M / (M - 1)``. Cost per BatchNorm call: one extra normalisation and
one all-reduce of ``2C + 1`` numbers.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


#: running statistics of the BatchNorms inside a forward, by ``id(module)`` (pre-hook -> hook)
_SAVED: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


class AllReduceSum(torch.autograd.Function):
    """``y = sum_r x_r`` over the ranks; backward: ``dx_r = sum_r dy_r`` (the adjoint of a sum that
    every rank receives). Shapes unchanged."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """All-reduce a copy of ``x``."""
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """All-reduce the incoming gradient."""
        g = grad.clone()
        dist.all_reduce(g)
        return g


def _pre(module: _BatchNorm, args: tuple[Any, ...]) -> None:
    """Remember the running statistics before the module's local update."""
    if module.training and module.track_running_stats and module.running_mean is not None:
        rv, nb = module.running_var, module.num_batches_tracked
        assert rv is not None and nb is not None
        _SAVED[id(module)] = (module.running_mean.clone(), rv.clone(), nb.clone())


def _post(module: _BatchNorm, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor | None:
    """Replace the output by the globally normalised one (training mode only), fix running stats."""
    if not module.training:
        return None
    x = args[0]
    c = x.shape[1]
    dims = [d for d in range(x.dim()) if d != 1]
    m = torch.tensor([x.numel() / c], dtype=x.dtype, device=x.device)
    packed = AllReduceSum.apply(torch.cat([x.sum(dims), (x * x).sum(dims), m]))
    total = packed[-1]
    mean = packed[:c] / total
    var = (packed[c:2 * c] / total - mean * mean).clamp_min(0)
    shape = [1, c] + [1] * (x.dim() - 2)
    y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + module.eps)
    if module.affine:
        y = y * module.weight.view(shape) + module.bias.view(shape)
    saved = _SAVED.pop(id(module), None)
    if saved is not None:
        rm, rv, nb = saved
        with torch.no_grad():
            module.num_batches_tracked.copy_(nb + 1)  # type: ignore[union-attr]
            f = module.momentum if module.momentum is not None else 1.0 / float(nb + 1)
            n = float(total.detach())
            module.running_mean.copy_((1 - f) * rm + f * mean.detach())  # type: ignore[union-attr]
            module.running_var.copy_((1 - f) * rv + f * var.detach() * n / max(n - 1, 1.0))  # type: ignore[union-attr]
    return y


def batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm modules of ``model`` (1d, 2d, 3d; not SyncBatchNorm, which syncs itself)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and not isinstance(m, nn.SyncBatchNorm)]


@contextmanager
def synced_batchnorm(model: nn.Module) -> Iterator[int]:
    """Inside, every BatchNorm of ``model`` normalises with the statistics of all ranks' rows
    (needs an initialised process group); yields the number of modules hooked."""
    mods = batchnorms(model) if dist.is_initialized() and dist.get_world_size() > 1 else []
    handles = []
    for m in mods:
        handles.append(m.register_forward_pre_hook(_pre))
        handles.append(m.register_forward_hook(_post))
    try:
        yield len(mods)
    finally:
        for h in handles:
            h.remove()


__all__ = ["synced_batchnorm", "batchnorms", "AllReduceSum"]
