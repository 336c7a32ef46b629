"""Integrated gradients (Sundararajan, Taly & Yan 2017, "Axiomatic attribution for deep networks").

``IG_i(x) = (x_i - x'_i) * int_0^1 d f_t(x' + a (x - x')) / dx_i da``, the integral approximated by a
quadrature rule with ``steps`` nodes: Riemann sums (``riemann_left``, ``riemann_right``,
``riemann_middle``, ``riemann_trapezoid``; the node placement Captum uses) or Gauss-Legendre
(``gausslegendre``, exact for polynomials of degree ``2 steps - 1`` in ``a``). The trapezoid rule
here is the composite rule on ``linspace(0, 1, steps)`` (weights ``1 / (steps - 1)``, halved at the
ends, summing to 1); Captum 0.9 weights the same nodes by ``1 / steps`` (summing to ``1 - 1/steps``),
so its trapezoid attributions are ours times ``(steps - 1) / steps``.

Completeness: ``sum_i IG_i = f_t(x) - f_t(x')``; :attr:`IntegratedGradients.last_delta` holds the
convergence delta ``sum_i IG_i - (f_t(x) - f_t(x'))`` ``(N,)`` of the last call (Captum's
``return_convergence_delta``). On a linear model every rule is exact: ``IG = (x - x') * w``.

Shapes: ``x (N, *sample) -> (N, *sample)``; ``baseline`` a number or a tensor broadcasting to ``x``.
Cost: ``N x steps`` forward and backward passes plus 2N forwards for the delta, run ``batch_size``
rows at a time, so memory is bounded by the budget, not by ``N x steps``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fortify.errors import ConfigError
from fortify.explain.attributions._baseline import check_baseline, expand_baseline
from fortify.explain.base import ATTRIBUTIONS, DEFAULT_BATCH_SIZE, Attribution, check_positive_int
from fortify.explain.ops import repeated_grad, target_scores

METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


def quadrature(method: str, steps: int) -> tuple[list[float], list[float]]:
    """``(alphas, weights)`` of the rule on [0, 1] with ``steps`` nodes (weights sum to 1)."""
    if method == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(steps)
        return [float(a) for a in 0.5 * (nodes + 1)], [float(v) for v in 0.5 * w]
    if method == "riemann_trapezoid":
        if steps < 2:
            raise ConfigError("riemann_trapezoid needs steps >= 2")
        w_mid = 1.0 / (steps - 1)
        return torch.linspace(0, 1, steps).tolist(), [w_mid / 2] + [w_mid] * (steps - 2) + [w_mid / 2]
    start, stop = {"riemann_left": (0.0, 1 - 1 / steps), "riemann_right": (1 / steps, 1.0),
                   "riemann_middle": (1 / (2 * steps), 1 - 1 / (2 * steps))}[method]
    return torch.linspace(start, stop, steps).tolist(), [1.0 / steps] * steps


@ATTRIBUTIONS.register("integrated-gradients", help="path integral of gradients from a baseline (Sundararajan et al. 2017)")
class IntegratedGradients(Attribution):
    """Integrated gradients with a Riemann or Gauss-Legendre rule; ``last_delta`` after each call."""

    def __init__(self, steps: int = 50, method: str = "gausslegendre", baseline: float | torch.Tensor = 0.0,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(batch_size)
        self.steps = check_positive_int(steps, "steps")
        if method not in METHODS:
            raise ConfigError(f"integrated-gradients method {method!r} unknown; allowed: {', '.join(METHODS)}")
        self.method = method
        self.baseline = check_baseline(baseline)
        quadrature(method, self.steps)  # riemann_trapezoid with one step: refused now, not at call time
        #: ``sum(IG) - (f_t(x) - f_t(x'))`` per row of the last call, ``(N,)``
        self.last_delta: torch.Tensor | None = None

    def _run(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        base = expand_baseline(self.baseline, x)
        alphas, weights = quadrature(self.method, self.steps)
        a = torch.tensor(alphas, dtype=x.dtype, device=x.device)
        diff = x - base
        view = (-1,) + (1,) * (x.dim() - 1)

        def points(s: slice) -> torch.Tensor:  # row r = step k, example i with r = k * n + i
            rows = torch.arange(s.start, s.stop, device=x.device)
            return base[rows % n] + a[rows // n].reshape(view) * diff[rows % n]

        grads = repeated_grad(model, points, n * self.steps, target.repeat(self.steps), self.batch_size)
        w = torch.tensor(weights, dtype=x.dtype, device=x.device).reshape((-1, 1) + (1,) * (x.dim() - 1))
        attr = diff * (grads.reshape((self.steps,) + tuple(x.shape)) * w).sum(dim=0)
        gap = target_scores(model, x, target, self.batch_size) - target_scores(model, base, target, self.batch_size)
        self.last_delta = attr.reshape(n, -1).sum(dim=1) - gap
        return attr
