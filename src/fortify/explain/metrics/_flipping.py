"""Pixel flipping shared by the deletion and insertion metrics (Samek et al. 2017; Petsiuk et al. 2018)."""
from __future__ import annotations

import torch
from torch import nn

from typing import Any, ClassVar

from fortify.explain.base import DEFAULT_BATCH_SIZE, check_positive_int
from fortify.explain.metrics.base import AttributionMetric
from fortify.explain.ops import chunks, select
from fortify.validation import check_finite_number, forward_checked


def flip_curve(model: nn.Module, x: torch.Tensor, attributions: torch.Tensor, target: torch.Tensor, *,
               steps: int, baseline: float, insert: bool, batch_size: int) -> torch.Tensor:
    """Target probability ``(N, steps + 1)`` as the most relevant features (by attribution, every
    element of ``x``, ties in index order) are removed (set to ``baseline``; deletion) or inserted
    into an all-``baseline`` input (insertion), ``round(k d / steps)`` of the ``d`` features at step
    ``k``. Cost: ``N (steps + 1)`` forward passes, chunked."""
    n = x.shape[0]
    flat_x = x.reshape(n, -1)
    d = flat_x.shape[1]
    order = torch.argsort(attributions.reshape(n, -1), dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(d, device=x.device).expand(n, d))
    counts = torch.round(torch.arange(steps + 1, device=x.device, dtype=torch.float64) * d / steps).long()
    probs = []
    with torch.no_grad():
        for s in chunks(n * (steps + 1), batch_size):
            rows = torch.arange(s.start, s.stop, device=x.device)
            i, k = rows % n, rows // n
            chosen = rank[i] < counts[k].unsqueeze(1)
            keep = chosen if insert else ~chosen
            pts = torch.where(keep, flat_x[i], torch.full_like(flat_x[i], baseline)).reshape((-1,) + tuple(x.shape[1:]))
            probs.append(select(torch.softmax(forward_checked(model, pts), dim=1), target[i]))
    return torch.cat(probs).reshape(steps + 1, n).T


def auc(curve: torch.Tensor) -> torch.Tensor:
    """Trapezoid area under ``(N, K + 1)`` values on an even grid of [0, 1]: ``(N,)``."""
    return torch.trapezoid(curve, dx=1.0 / (curve.shape[1] - 1), dim=1)


class FlipMetric(AttributionMetric):
    """Shared body of the pixel-flipping AUCs: ``insert`` False removes features (deletion), True puts
    them back (insertion); ``steps`` stages towards ``baseline``; ``extra["curve"]`` ``(N, steps + 1)``."""

    insert: ClassVar[bool] = False

    def __init__(self, steps: int = 20, baseline: float = 0.0, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(batch_size)
        self.steps = check_positive_int(steps, "steps")
        self.baseline = check_finite_number(baseline, "baseline")

    def _run(self, model: nn.Module, x: torch.Tensor, attributions: torch.Tensor,
             target: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        curve = flip_curve(model, x, attributions, target, steps=self.steps, baseline=self.baseline,
                           insert=self.insert, batch_size=self.batch_size)
        return auc(curve), {"curve": curve}
