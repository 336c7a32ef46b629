"""Complexity (Bhatt, Weller & Moura 2020, "Evaluating and aggregating feature-based model
explanations"): the entropy of the fractional contributions ``p_i = |a_i| / sum_j |a_j|``.

``H = -sum_i p_i log p_i`` (natural log, ``0 log 0 = 0``): 0 when one feature holds everything,
``log d`` for a uniform attribution (and for an all-zero one, which explains nothing). **Lower is
better**. Cost: no forward pass; one pass over ``N x d`` numbers.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from fortify.explain.metrics.base import ATTRIBUTION_METRICS, AttributionMetric


@ATTRIBUTION_METRICS.register("complexity", help="entropy of the fractional contributions |a| / sum |a| (lower is better)")
class Complexity(AttributionMetric):
    """Entropy of the normalised absolute attribution; lower is better."""

    higher_is_better = False

    def _run(self, model: nn.Module, x: torch.Tensor, attributions: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        a = attributions.abs().reshape(n, -1).to(torch.float64)
        total = a.sum(dim=1, keepdim=True)
        p = a / torch.where(total == 0, torch.ones_like(total), total)
        h = -torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p)).sum(dim=1)
        h = torch.where(total.squeeze(1) == 0, torch.full_like(h, math.log(a.shape[1])), h)
        return h.to(x.dtype)
