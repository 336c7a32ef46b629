"""Sparseness (Chalasani, Chen, Chowdhury, Wu & Jha 2020, "Concise explanations of neural networks
using adversarial training"): the Gini index of ``|a|`` over all features.

``G = sum_k (2k - d - 1) |a|_(k) / (d sum_k |a|_(k))`` with ``|a|`` sorted ascending (``k = 1..d``):
0 for a uniform attribution, ``1 - 1/d`` when one feature holds everything (0 for an all-zero
attribution). **Higher is better** (a sparser, more concise explanation). Cost: no forward pass;
one sort of ``N x d`` numbers.
"""
from __future__ import annotations

import torch
from torch import nn

from fortify.explain.metrics.base import ATTRIBUTION_METRICS, AttributionMetric


def gini(a: torch.Tensor) -> torch.Tensor:
    """Gini index of each row of ``|a|``: ``(N, ...) -> (N,)``."""
    n = a.shape[0]
    v = a.abs().reshape(n, -1).to(torch.float64).sort(dim=1).values
    d = v.shape[1]
    k = torch.arange(1, d + 1, dtype=v.dtype, device=v.device)
    total = v.sum(dim=1)
    g = ((2 * k - d - 1) * v).sum(dim=1) / (d * torch.where(total == 0, torch.ones_like(total), total))
    return g.to(a.dtype)


@ATTRIBUTION_METRICS.register("sparseness", help="Gini index of |attribution| (higher is better)")
class Sparseness(AttributionMetric):
    """Gini index of the absolute attribution; higher is better."""

    higher_is_better = True

    def _run(self, model: nn.Module, x: torch.Tensor, attributions: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return gini(attributions)
