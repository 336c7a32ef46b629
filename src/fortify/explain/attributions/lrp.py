"""LRP-epsilon (Bach, Binder, Montavon, Klauschen, Mueller & Samek 2015, "On pixel-wise explanations for
non-linear classifier decisions by layer-wise relevance propagation") for ReLU networks.

The epsilon rule redistributes the relevance ``R_k`` of each neuron over its inputs in proportion to
their contributions, ``R_j = sum_k a_j w_jk R_k / (z_k + eps sign(z_k))``, starting from the target
logit. On a network of affine layers (Linear, Conv, eval-mode BatchNorm, average pooling, residual
additions) and ReLUs this equals *input x modified gradient* (Ancona, Ceolini, Oztireli & Gross
2018, Prop. 2): the backward pass of every ``nn.ReLU`` module multiplies by ``relu(z) / (z + eps
sign(z))`` instead of ``1[z > 0]``, the target logit's gradient by ``z_t / (z_t + eps sign(z_t))``,
and the attribution is ``x * grad``. ``eps = 0`` is gradient x input (LRP-0); a larger ``eps``
absorbs weak, contradictory contributions (sparser maps). The epsilon is applied at each ReLU's
pre-activation, so a Conv -> BatchNorm -> ReLU block is treated as one affine layer (BatchNorm
folded), and Captum's ``LRP`` (``EpsilonRule`` on Linear / Conv, identity on ReLU) gives the same
numbers on Conv/Linear -> ReLU nets. Max-pooling passes the gradient of the pool (winner takes all).
Other nonlinear modules are an :class:`UnsupportedLayerError`; a functional ``F.relu`` is not seen.

Shapes: ``x (N, *sample) -> (N, *sample)``. Cost: N forward and backward rows (chunked).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fortify.errors import ConfigError, UnsupportedLayerError
from fortify.explain.attributions.deeplift import UNSUPPORTED
from fortify.explain.base import ATTRIBUTIONS, DEFAULT_BATCH_SIZE, Attribution
from fortify.explain.ops import chunks, select
from fortify.validation import check_finite_number, forward_checked


def _stabilised(z: torch.Tensor, eps: float) -> torch.Tensor:
    """``z + eps sign(z)`` with ``sign(0) = 1`` (never 0 for ``eps > 0``; 1 where ``z = 0`` and ``eps = 0``)."""
    den = z + eps * torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))
    return torch.where(den == 0, torch.ones_like(den), den)


class _EpsilonReLU(torch.autograd.Function):
    """ReLU whose backward multiplies by ``relu(z) / (z + eps sign z)``."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(z)
        ctx.eps = eps
        return z.clamp_min(0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (z,) = ctx.saved_tensors
        return grad * z.clamp_min(0) / _stabilised(z, ctx.eps), None


@ATTRIBUTIONS.register("lrp-epsilon", help="layer-wise relevance propagation, epsilon rule, ReLU networks (Bach et al. 2015)")
class LRPEpsilon(Attribution):
    """LRP-epsilon (``eps >= 0``; 0: gradient x input) on ReLU networks."""

    def __init__(self, eps: float = 1e-2, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(batch_size)
        self.eps = check_finite_number(eps, "eps")
        if self.eps < 0:
            raise ConfigError(f"eps must be >= 0 (the stabiliser of the epsilon rule), got {eps!r}")

    def _run(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bad = [f"{n} ({type(m).__name__})" for n, m in model.named_modules() if isinstance(m, UNSUPPORTED)]
        if bad:
            raise UnsupportedLayerError(f"lrp-epsilon handles ReLU networks; unsupported: {', '.join(bad[:5])}")
        eps = self.eps
        handles = [m.register_forward_hook(lambda mod, i, o: _EpsilonReLU.apply(i[0], eps))
                   for m in model.modules() if isinstance(m, nn.ReLU)]
        out = []
        try:
            for s in chunks(x.shape[0], self.batch_size):
                with torch.enable_grad():
                    xg = x[s].detach().requires_grad_(True)
                    score = select(forward_checked(model, xg), target[s])
                    top = (score / _stabilised(score, eps)).detach()  # epsilon rule at the target logit
                    (g,) = torch.autograd.grad((score * top).sum(), xg)
                out.append(x[s] * g)
        finally:
            for h in handles:
                h.remove()
        return torch.cat(out)
