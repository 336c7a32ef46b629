"""``ReparamNet``: run a compressible model with re-parametrised weights and activations.

Training-time compression methods (cyclical pruning, HYDRA scores, targeted dropout,
quantization-aware training) all need the forward pass to use ``w_eff = f(w, state)`` instead of
``w`` while gradients reach ``w`` (or a score tensor). ``ReparamNet(model, weight_fn, act_fn)``
wraps the model (its parameters stay shared, so training the wrapper trains the model) and
evaluates the Sequential layer by layer::

    x -> [(x - mean) / std] -> for each layer: Conv2d/Linear with weight_fn(i, layer.weight) on
         act_fn(i, x); other layers as is

so it is a drop-in ``nn.Module`` for :class:`fortify.train.Trainer` and every fortify task
(``pgd_at`` runs its attack against the re-parametrised network). Shapes: ``(N, C, H, W) -> (N, K)``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from fortify.compress.base import sequential_of
from fortify.models import Normalized

WeightFn = Callable[[int, torch.Tensor], torch.Tensor]
ActFn = Callable[[int, torch.Tensor], torch.Tensor]


def ste_mask(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``w * mask`` in the forward pass, identity gradient to ``w`` (straight-through estimator)."""
    return w + (w * mask - w).detach()


class ReparamNet(nn.Module):
    """Wrap ``model`` (Sequential or Normalized) so Conv2d/Linear use ``weight_fn(i, W)`` on ``act_fn(i, x)``."""

    def __init__(self, model: nn.Module, weight_fn: WeightFn, act_fn: Optional[ActFn] = None) -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        super().__init__()
        self.model = model
        self.seq = sequential_of(model)
        self.weight_fn = weight_fn
        self.act_fn = act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` in [0, 1] -> logits ``(N, K)``."""
        if isinstance(self.model, Normalized):
            x = (x - self.model.mean) / self.model.std
        for i, layer in enumerate(self.seq):
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                if self.act_fn is not None:
                    x = self.act_fn(i, x)
                w = self.weight_fn(i, layer.weight)
                if isinstance(layer, nn.Conv2d):
                    x = F.conv2d(x, w, layer.bias, layer.stride, layer.padding)
                else:
                    x = F.linear(x, w, layer.bias)
            else:
                x = layer(x)
        return x


__all__ = ["ReparamNet", "ste_mask"]
