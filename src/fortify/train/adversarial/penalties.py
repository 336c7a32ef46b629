"""Differentiable input-gradient regularisers shared by several tasks.

* :func:`grad_align` - GradAlign (Andriushchenko & Flammarion 2020, "Understanding and improving
  fast adversarial training"): ``1 - cos(grad_x l(x, y), grad_x l(x + eta, y))`` with ``eta``
  uniform in the linf ball; keeps the loss locally linear so FGSM training does not collapse.
* :func:`input_grad_norm` - squared input-gradient norm (double backpropagation, Drucker & LeCun
  1992; the gradient-norm term of Srinivas et al. 2022).
* :func:`curvature` - finite-difference curvature along the gradient sign (CURE,
  Moosavi-Dezfooli et al. 2019; the curvature penalty of Srinivas et al. 2022):
  ``||grad l(x + h d) - grad l(x)||^2 / h^2`` with ``d = sign(grad l(x)) / sqrt(D)``.

All take ``x (B, ...)``, ``y (B,)`` and return a scalar with graph (``create_graph=True``), so the
Trainer's backward reaches the parameters; none of them writes ``param.grad``. Each costs ``B``
input-gradient evaluations per gradient taken (reported by the callers).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _loss_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
    xg = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(xg), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xg, create_graph=create_graph)
    return g


def grad_align(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """GradAlign regulariser (mean over the batch of ``1 - cos``); 2 B gradient evaluations."""
    eta = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    g1 = _loss_grad(model, x, y).flatten(1)
    g2 = _loss_grad(model, (x + eta).clamp(0, 1), y).flatten(1)
    cos = F.cosine_similarity(g1, g2, dim=1, eps=1e-12)
    return (1.0 - cos).mean()


def input_grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean squared l2 norm of the per-sample input gradient; returns ``(penalty, grad)``; B evaluations."""
    g = _loss_grad(model, x, y)
    return g.flatten(1).pow(2).sum(dim=1).mean(), g


def curvature(model: nn.Module, x: torch.Tensor, y: torch.Tensor, h: float,
              grad: torch.Tensor | None = None) -> torch.Tensor:
    """Finite-difference curvature ``mean ||g(x + h d) - g(x)||^2 / h^2`` (CURE); 2 B evaluations
    (B if ``grad`` at ``x`` is given)."""
    g = _loss_grad(model, x, y) if grad is None else grad
    d = g.detach().sign()
    d = d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
    g_h = _loss_grad(model, x + h * d, y)
    return (g_h - g).flatten(1).pow(2).sum(dim=1).mean() / (h * h)


__all__ = ["grad_align", "input_grad_norm", "curvature"]
