"""Deletion AUC (MoRF pixel flipping: Samek et al. 2017, "Evaluating the visualization of what a deep
neural network has learned"; Petsiuk et al. 2018, RISE).

The most relevant features first (by attribution value, each element of ``x``) are set to
``baseline`` in ``steps`` equal stages; the value is the area under the target-probability curve
over the removed fraction [0, 1]. **Lower is better** (a faithful attribution removes the evidence
first). ``extra["curve"]``: ``(N, steps + 1)``. Cost: ``N (steps + 1)`` forward passes (chunked).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fortify.explain.base import DEFAULT_BATCH_SIZE, check_positive_int
from fortify.explain.metrics._flipping import auc, flip_curve
from fortify.explain.metrics.base import ATTRIBUTION_METRICS, AttributionMetric
from fortify.validation import check_finite_number


@ATTRIBUTION_METRICS.register("deletion", help="AUC of the target probability as top features are removed (lower is better)")
class Deletion(AttributionMetric):
    """MoRF deletion AUC; lower is better."""

    higher_is_better = False

    def __init__(self, steps: int = 20, baseline: float = 0.0, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(batch_size)
        self.steps = check_positive_int(steps, "steps")
        self.baseline = check_finite_number(baseline, "baseline")

    def _run(self, model: nn.Module, x: torch.Tensor, attributions: torch.Tensor,
             target: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        curve = flip_curve(model, x, attributions, target, steps=self.steps, baseline=self.baseline, insert=False,
                           batch_size=self.batch_size)
        return auc(curve), {"curve": curve}
