"""Gradient x input (Shrikumar et al. 2016, "Not just a black box"): ``x * d f_t / dx``.

For a linear model ``f = w.x + b`` it is ``w * x``, whose sum is ``f(x) - b``. Shapes: ``x (N,
*sample) -> (N, *sample)``. Cost: N forward and backward passes (chunked by ``batch_size``).
"""
from __future__ import annotations

import torch
from torch import nn

from fortify.explain.base import ATTRIBUTIONS, Attribution
from fortify.explain.ops import target_grad


@ATTRIBUTIONS.register("gradient-x-input", help="input times the gradient of the target logit (Shrikumar et al. 2016)")
class GradientXInput(Attribution):
    """``x * grad``: the first-order Taylor contribution of each feature from a zero input."""

    def _run(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return x * target_grad(model, x, target, self.batch_size)
