"""Completeness error (Sundararajan et al. 2017's completeness axiom; Shrikumar et al. 2017's
summation-to-delta): ``|sum_i a_i - (f_t(x) - f_t(x'))|`` for a baseline ``x'`` (a number, default
0, or a tensor broadcasting to ``x``). Zero for integrated gradients in the limit of many steps and
for DeepLIFT on ReLU nets. **Lower is better** (meaningful for methods that claim completeness
against that baseline). Cost: 2N forward passes.
"""
from __future__ import annotations

import torch
from torch import nn

from fortify.explain.attributions._baseline import check_baseline, expand_baseline
from fortify.explain.base import DEFAULT_BATCH_SIZE
from fortify.explain.metrics.base import ATTRIBUTION_METRICS, AttributionMetric
from fortify.explain.ops import target_scores


@ATTRIBUTION_METRICS.register("completeness", help="|sum(attribution) - (f(x) - f(baseline))| (lower is better)")
class CompletenessError(AttributionMetric):
    """Absolute completeness gap; lower is better."""

    higher_is_better = False

    def __init__(self, baseline: float | torch.Tensor = 0.0, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(batch_size)
        self.baseline = check_baseline(baseline)

    def _run(self, model: nn.Module, x: torch.Tensor, attributions: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        base = expand_baseline(self.baseline, x)
        gap = target_scores(model, x, target, self.batch_size) - target_scores(model, base, target, self.batch_size)
        return (attributions.reshape(x.shape[0], -1).sum(dim=1) - gap).abs()
