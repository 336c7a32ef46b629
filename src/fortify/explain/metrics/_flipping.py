"""Pixel flipping shared by the deletion and insertion metrics (Samek et al. 2017; Petsiuk et al. 2018).

Each distinct perturbed input is evaluated once. A step whose newly flipped features already equal
``baseline`` leaves the input as it was (MNIST's background is 0, so with ``baseline = 0`` and one
feature per step ~80% of the steps are such no-ops), and every image reaches the same all-``baseline``
input (deletion's last steps, insertion's first): that one is run once for the whole batch. Identical
inputs give identical outputs, so the curve is the one a forward per step gives (up to the last float
bits a different batch composition can change in a BLAS kernel: float64 tests 1e-12, float32 MNIST models
<= 1e-7).
"""
from __future__ import annotations

import torch
from torch import nn

from typing import Any, ClassVar

from fortify.explain.base import DEFAULT_BATCH_SIZE, check_positive_int
from fortify.explain.metrics.base import AttributionMetric
from fortify.explain.ops import chunks, select
from fortify.validation import check_finite_number, forward_checked


def flip_plan(x: torch.Tensor, attributions: torch.Tensor, *, steps: int, baseline: float,
              insert: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which of the ``N (steps + 1)`` perturbed inputs are distinct. Returns ``rank (N, d)`` (each
    feature's place in the order, most relevant first, ties in index order), ``counts (steps + 1,)``
    (features flipped at step ``k``: ``round(k d / steps)``), ``source (N, steps + 1)`` (the step
    whose input equals step ``k``'s: the first step of its run of identical inputs) and
    ``blank (N, steps + 1)`` (True where the input is all ``baseline``). Cost: a sort of ``N d``."""
    n = x.shape[0]
    flat_x = x.reshape(n, -1)
    d = flat_x.shape[1]
    order = torch.argsort(attributions.reshape(n, -1), dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(d, device=x.device).expand(n, d))
    counts = torch.round(torch.arange(steps + 1, device=x.device, dtype=torch.float64) * d / steps).long()
    # effective[i, k]: features among the first counts[k] (in rank order) that differ from baseline;
    # two steps with the same count have the same input (the features between them equal baseline)
    moved = (flat_x != torch.full((), baseline, dtype=x.dtype, device=x.device)).gather(1, order)
    cum = torch.cat([torch.zeros(n, 1, dtype=torch.int32, device=x.device),
                     moved.cumsum(dim=1, dtype=torch.int32)], dim=1)
    effective = cum[:, counts]
    new = torch.ones_like(effective, dtype=torch.bool)
    new[:, 1:] = effective[:, 1:] != effective[:, :-1]
    steps_idx = torch.arange(steps + 1, device=x.device).expand(n, steps + 1)
    source = torch.where(new, steps_idx, torch.zeros_like(steps_idx)).cummax(dim=1).values
    blank = effective == 0 if insert else effective == cum[:, -1:]
    return rank, counts, source, blank


def flip_curve(model: nn.Module, x: torch.Tensor, attributions: torch.Tensor, target: torch.Tensor, *,
               steps: int, baseline: float, insert: bool, batch_size: int) -> torch.Tensor:
    """Target probability ``(N, steps + 1)`` as the most relevant features (by attribution, every
    element of ``x``, ties in index order) are removed (set to ``baseline``; deletion) or inserted
    into an all-``baseline`` input (insertion), ``round(k d / steps)`` of the ``d`` features at step
    ``k``. Cost: one forward per distinct input (:func:`flip_plan`), at most ``N (steps + 1)``,
    chunked to ``batch_size`` rows."""
    n = x.shape[0]
    flat_x = x.reshape(n, -1)
    rank, counts, source, blank = flip_plan(x, attributions, steps=steps, baseline=baseline, insert=insert)
    todo = (source == torch.arange(steps + 1, device=x.device)) & ~blank  # (N, steps + 1) rows to run
    k_all, i_all = todo.T.nonzero(as_tuple=True)  # step-major, as the curve is laid out
    fill = torch.full((), baseline, dtype=x.dtype, device=x.device)
    probs = torch.zeros(n, steps + 1, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        for s in chunks(int(i_all.shape[0]), batch_size):
            i, k = i_all[s], k_all[s]
            chosen = rank[i] < counts[k].unsqueeze(1)
            keep = chosen if insert else ~chosen
            pts = torch.where(keep, flat_x[i], fill).reshape((-1,) + tuple(x.shape[1:]))
            probs[i, k] = select(torch.softmax(forward_checked(model, pts), dim=1), target[i])
        if bool(blank.any()):
            empty = torch.full((1,) + tuple(x.shape[1:]), baseline, dtype=x.dtype, device=x.device)
            at_blank = torch.softmax(forward_checked(model, empty), dim=1)[0, target]  # (N,)
            probs = torch.where(blank, at_blank.unsqueeze(1), probs)
    return probs.gather(1, source)


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
