"""Clean accuracy: the one helper every pillar uses to count correct top-1 predictions.

``clean_accuracy(model, x, y, batch_size)`` is the fraction of ``x (N, ...)`` whose top-1 class is
``y (N,)``; :func:`correct_mask` gives the per-sample ``(N,)`` bool. The model runs under
:func:`fortify.models.state.eval_mode` (every module's own ``training`` flag restored afterwards)
without gradients, in minibatches of ``batch_size`` rows on the model's device. Cost: ``N`` forward
evaluations. Inputs are not validated here (callers validate at their entry points).
"""
from __future__ import annotations

import torch
from torch import nn

from fortify.errors import ConfigError
from fortify.models.state import device_of, eval_mode

__all__ = ["clean_accuracy", "correct_mask"]


def correct_mask(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """``(N,)`` bool on ``x``'s device: ``model`` classifies ``x[i]`` as ``y[i]`` (eval mode, no grad)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    dev = device_of(model) or x.device
    out = []
    with eval_mode(model), torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            logits = model(x[i:i + batch_size].to(dev))
            out.append((logits.argmax(dim=1) == y[i:i + batch_size].to(dev)).to(x.device))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=x.device)


def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on ``x (N, ...)``, ``y (N,)`` in ``[0, 1]`` (0.0 for ``N = 0``)."""
    return int(correct_mask(model, x, y, batch_size).sum()) / max(1, int(x.shape[0]))
