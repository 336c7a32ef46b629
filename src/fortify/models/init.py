"""Weight initialisations for training from scratch.

``ibp_init(model)`` is the IBP initialisation of Shi et al. 2021 ("Fast certified robust training
with short warmup", NeurIPS): every ``Linear`` / ``Conv2d`` weight except the last layer's is drawn
from ``N(0, 2*pi / fan_in**2)``, so that in expectation the radius of an interval passed through
``|W|`` keeps its size layer after layer (``E|w| * fan_in = sqrt(2/pi) * sqrt(2*pi) = 2`` for the
pre-ReLU radius, halved on average by the ReLU). The usual Kaiming-uniform initialisation instead
grows IBP bounds by ``~sqrt(fan_in)`` per layer, which is why IBP training needs long warm-ups.
Biases are left as they are. It re-initialises in place (it is an initialisation: call it on a
freshly built model, never on a trained one) and returns the number of tensors re-drawn.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from fortify.errors import ConfigError


def ibp_init(model: nn.Module, generator: torch.Generator | None = None) -> int:
    """Re-draw the weights of every Linear/Conv2d but the last from ``N(0, 2*pi/fan_in^2)``."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers:
        raise ConfigError("ibp_init: the model has no Linear or Conv2d layer")
    with torch.no_grad():
        for m in layers[:-1]:
            fan_in = m.weight[0].numel()
            std = math.sqrt(2 * math.pi) / fan_in
            m.weight.copy_(torch.randn(m.weight.shape, generator=generator, dtype=m.weight.dtype) * std)
    return len(layers) - 1


__all__ = ["ibp_init"]
