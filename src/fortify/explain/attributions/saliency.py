"""Saliency (Simonyan, Vedaldi & Zisserman 2014, "Deep inside convolutional networks"): ``|d f_t / dx|``.

Shapes: ``x (N, *sample) -> (N, *sample)``. Cost: N forward and backward passes (chunked by
``batch_size``). ``absolute=False`` returns the signed gradient.
"""
from __future__ import annotations

import torch
from torch import nn

from fortify.explain.base import ATTRIBUTIONS, DEFAULT_BATCH_SIZE, Attribution
from fortify.explain.ops import target_grad


@ATTRIBUTIONS.register("saliency", help="|gradient| of the target logit (Simonyan et al. 2014)")
class Saliency(Attribution):
    """Absolute input gradient of the target logit (signed with ``absolute=False``)."""

    def __init__(self, absolute: bool = True, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(batch_size)
        self.absolute = bool(absolute)

    def _run(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        g = target_grad(model, x, target, self.batch_size)
        return g.abs() if self.absolute else g
