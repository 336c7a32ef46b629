"""Insertion AUC (Petsiuk, Das & Saenko 2018, "RISE: randomized input sampling for explanation").

Starting from an all-``baseline`` input, the most relevant features first are put back in ``steps``
equal stages; the value is the area under the target-probability curve over the inserted fraction
[0, 1]. **Higher is better**. ``extra["curve"]``: ``(N, steps + 1)``. Cost: ``N (steps + 1)``
forward passes (chunked).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fortify.explain.base import DEFAULT_BATCH_SIZE, check_positive_int
from fortify.explain.metrics._flipping import auc, flip_curve
from fortify.explain.metrics.base import ATTRIBUTION_METRICS, AttributionMetric
from fortify.validation import check_finite_number


@ATTRIBUTION_METRICS.register("insertion", help="AUC of the target probability as top features are inserted (higher is better)")
class Insertion(AttributionMetric):
    """Insertion AUC; higher is better."""

    higher_is_better = True

    def __init__(self, steps: int = 20, baseline: float = 0.0, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(batch_size)
        self.steps = check_positive_int(steps, "steps")
        self.baseline = check_finite_number(baseline, "baseline")

    def _run(self, model: nn.Module, x: torch.Tensor, attributions: torch.Tensor,
             target: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        curve = flip_curve(model, x, attributions, target, steps=self.steps, baseline=self.baseline, insert=True,
                           batch_size=self.batch_size)
        return auc(curve), {"curve": curve}
