"""Batched model access shared by the attribution methods and metrics.

Every helper runs the model in chunks of at most ``batch_size`` rows, the memory budget of the
pillar: integrated gradients with 50 steps on 64 images is 3,200 rows, run ``batch_size`` at a time
(Captum's ``IntegratedGradients`` runs them all at once unless ``internal_batch_size`` is given).
Gradients are taken with ``torch.autograd.grad`` on the input, never into ``param.grad``; callers
run inside :func:`fortify.models.state.frozen`. Rows are independent (eval mode), so the chunking
never changes a result.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn

from fortify.validation import forward_checked


def chunks(n: int, batch_size: int) -> Iterator[slice]:
    """Slices ``[0, n)`` in steps of ``batch_size``."""
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def select(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``logits[i, target[i]]``: ``(B, C), (B,) -> (B,)``."""
    return logits.gather(1, target.reshape(-1, 1)).squeeze(1)


def target_scores(model: nn.Module, x: torch.Tensor, target: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The target logit ``f_t(x)`` without gradients: ``(B, ...), (B,) -> (B,)``. Cost: B forwards."""
    out = []
    with torch.no_grad():
        for s in chunks(x.shape[0], batch_size):
            out.append(select(forward_checked(model, x[s]), target[s]))
    return torch.cat(out)


def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits ``(B, C)`` without gradients, chunked."""
    with torch.no_grad():
        return torch.cat([forward_checked(model, x[s]) for s in chunks(x.shape[0], batch_size)])


def target_grad(model: nn.Module, x: torch.Tensor, target: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``d f_t(x) / dx`` shaped like ``x`` (``(B, ...)``); cost: B forward and backward passes."""
    grads = []
    for s in chunks(x.shape[0], batch_size):
        with torch.enable_grad():
            xg = x[s].detach().requires_grad_(True)
            score = select(forward_checked(model, xg), target[s])
            (g,) = torch.autograd.grad(score.sum(), xg)
        grads.append(g.detach())
    return torch.cat(grads)


def repeated_grad(model: nn.Module, points: Callable[[slice], torch.Tensor], rows: int, target: torch.Tensor,
                  batch_size: int) -> torch.Tensor:
    """Gradients at ``rows`` points built lazily by ``points(slice)`` (so the ``(rows, ...)`` stack
    of interpolated / noisy inputs is never materialised beyond one chunk); ``target (rows,)``."""
    grads = []
    for s in chunks(rows, batch_size):
        with torch.enable_grad():
            xg = points(s).detach().requires_grad_(True)
            score = select(forward_checked(model, xg), target[s])
            (g,) = torch.autograd.grad(score.sum(), xg)
        grads.append(g.detach())
    return torch.cat(grads)


__all__ = ["chunks", "predict_logits", "repeated_grad", "select", "target_grad", "target_scores"]
