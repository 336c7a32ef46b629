"""NES attack (Ilyas, Engstrom, Athalye & Lin 2018, "Black-box adversarial attacks with limited
queries and information", ICML): natural-evolution-strategies gradient estimates from scores, then
projected steepest-ascent steps.

Gradient estimate at ``x`` (antithetic Gaussian sampling, ``n`` pairs, scale ``sigma``)::

    g = 1 / (2 n sigma) * sum_i [L(x + sigma u_i) - L(x - sigma u_i)] u_i,   u_i ~ N(0, I)

with ``L`` the margin loss (``max_{j!=y} z_j - z_y`` untargeted, ``z_t - max_{j!=t} z_j`` targeted),
which is positive exactly at a successful point. The step follows PGD for the threat's norm
(``sign(g)`` for ``linf``, ``g / ||g||_2`` for ``l2``), with momentum on the estimate (as in the
paper) and the paper's plateau rule: a sample's step size is halved when its loss has not improved
for ``patience`` iterations. Each iteration costs ``2 n + 1`` queries per active sample (the ``+1``
scores the new iterate); samples stop when adversarial or when the budget cannot pay another
iteration. Shapes: ``x (B, ...)``; everything is vectorised over the batch.
"""
from __future__ import annotations

import torch

from fortify.attacks._box import Box, clamp, flat_box, sample_box, span
from fortify.attacks._box import rows as box_rows
from fortify.attacks._blackbox import (
    QueryBudget,
    check_positive_float,
    check_positive_int,
    flat,
    is_adversarial,
    view_b,
)
from fortify.attacks.base import Attack, Oracle
from fortify.attacks.losses import margin_loss
from fortify.attacks.registry import ATTACKS
from fortify.registry import renamed_kwargs
from fortify.errors import ConfigError
from fortify.threat import ThreatModel

#: the largest number of elements of one block of probe perturbations (memory bound)
_MAX_PROBE_ELEMENTS = 1 << 24


@ATTACKS.register("nes", help="NES gradient estimation (antithetic Gaussian) + PGD steps; score-based")
class NES(Attack):
    """NES + projected gradient steps (Ilyas et al. 2018), score-based, ``linf`` and ``l2``.

    Args:
        queries: query budget per sample inside the search.
        samples: antithetic pairs per gradient estimate (``2 * samples`` queries).
        sigma: probe scale, relative to the width of the input box.
        step_ratio: initial step size as a fraction of ``eps``.
        min_step_ratio: the plateau rule never shrinks the step below this fraction of ``eps``.
        momentum: weight of the previous estimate (``g <- m g_prev + (1 - m) g_new``).
        patience: iterations without improvement of a sample's loss before its step is halved.
    """

    norms = ("linf", "l2")
    access = "score"
    supports_targeted = True
    minimum_norm = False

    @renamed_kwargs(n_queries="queries")
    def __init__(
        self,
        queries: int = 5000,
        samples: int = 50,
        sigma: float = 1e-3,
        step_ratio: float = 0.25,
        min_step_ratio: float = 0.02,
        momentum: float = 0.5,
        patience: int = 5,
    ) -> None:
        self.queries = check_positive_int("queries", queries)
        self.samples = check_positive_int("samples", samples)
        self.sigma = check_positive_float("sigma", sigma)
        self.step_ratio = check_positive_float("step_ratio", step_ratio)
        self.min_step_ratio = check_positive_float("min_step_ratio", min_step_ratio)
        self.momentum = check_positive_float("momentum", momentum, allow_zero=True)
        if self.momentum >= 1:
            raise ConfigError(f"momentum must be in [0, 1), got {momentum!r}")
        self.patience = check_positive_int("patience", patience)
        if self.queries < 2 * self.samples + 1:
            raise ConfigError(
                f"queries={queries} cannot pay one NES iteration (2 * samples + 1 = {2 * self.samples + 1})"
            )

    @staticmethod
    def _loss(logits: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        """Margin loss ``(R,)`` to maximise; ``> 0`` exactly when the point is adversarial."""
        return -margin_loss(logits, t) if t is not None else margin_loss(logits, y)

    def _estimate(
        self,
        budget: QueryBudget,
        xc: torch.Tensor,
        idx: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor | None,
        sigma: float,
        bounds: Box,
        gen: torch.Generator | None,
    ) -> torch.Tensor:
        """NES estimate ``(R, ...)`` of the loss gradient at ``xc (R, ...)`` (rows of samples ``idx``);
        ``bounds`` floats or per-row ``(R, D)`` boxes (immutable features: ``lo = hi``, never probed)."""
        r = xc.shape[0]
        lo, hi = bounds
        movable = None
        if isinstance(lo, torch.Tensor) and isinstance(hi, torch.Tensor):
            movable = (hi > lo).to(xc.dtype)[:, None, :]
            bounds = (lo[:, None, :], hi[:, None, :])
        d = flat(xc).shape[1]
        chunk = max(1, min(self.samples, _MAX_PROBE_ELEMENTS // max(1, r * d)))
        g = torch.zeros_like(flat(xc))
        left = self.samples
        while left > 0:
            k = min(chunk, left)
            left -= k
            u = torch.randn((r, k, d), generator=gen, device=xc.device, dtype=xc.dtype)
            u = u if movable is None else u * movable
            base = flat(xc)[:, None, :]
            probes = clamp(torch.cat([base + sigma * u, base - sigma * u], dim=1), bounds)  # (r, 2k, d)
            rows = probes.reshape((r * 2 * k,) + xc.shape[1:])
            owner = idx.repeat_interleave(2 * k)
            yy = y.repeat_interleave(2 * k)
            tt = None if t is None else t.repeat_interleave(2 * k)
            loss = self._loss(budget.logits(rows, owner), yy, tt).reshape(r, 2 * k)
            diff = loss[:, :k] - loss[:, k:]
            g += (diff[:, :, None] * u).sum(dim=1)
        return (g / (2 * self.samples * sigma)).reshape(xc.shape)

    def _run(
        self,
        oracle: Oracle,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        targeted: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """NES-PGD on ``x (B, ...)``; returns the best point found per sample ``(B, ...)``."""
        b = x.shape[0]
        dev = x.device
        if threat.eps == 0:
            return x.clone()
        sigma = self.sigma * span(threat.bounds)
        box = flat_box(sample_box(threat, x), b)
        budget = QueryBudget(oracle, b, self.queries, dev)
        cost = 2 * self.samples + 1
        x_cur = x.clone()
        x_best = x.clone()
        best_loss = torch.full((b,), -float("inf"), device=dev, dtype=x.dtype)
        step = torch.full((b,), self.step_ratio * threat.eps, device=dev, dtype=x.dtype)
        min_step = self.min_step_ratio * threat.eps
        stall = torch.zeros(b, dtype=torch.long, device=dev)
        momentum = torch.zeros_like(x)
        done = torch.zeros(b, dtype=torch.bool, device=dev)
        first = True
        while True:
            idx = (~done & (budget.remaining() >= cost)).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            yi = y[idx]
            ti = None if targeted is None else targeted[idx]
            g = self._estimate(budget, x_cur[idx], idx, yi, ti, sigma, box_rows(box, idx), generator)
            g = g if first else self.momentum * momentum[idx] + (1 - self.momentum) * g
            momentum[idx] = g
            first = False
            if threat.norm == "linf":
                direction = g.sign()
            else:
                direction = g / view_b(flat(g).norm(dim=1).clamp_min(1e-12), g)
            x_new = threat.project(x_cur[idx] + view_b(step[idx], g) * direction, x[idx])
            logits = budget.logits(x_new, idx)
            loss = self._loss(logits, yi, ti)
            better = loss > best_loss[idx]
            x_best[idx] = torch.where(view_b(better, x_new), x_new, x_best[idx])
            best_loss[idx] = torch.where(better, loss, best_loss[idx])
            x_cur[idx] = x_new
            # plateau rule: halve the step after `patience` iterations without improvement
            st = torch.where(better, torch.zeros_like(stall[idx]), stall[idx] + 1)
            shrink = st >= self.patience
            step[idx] = torch.where(shrink, (step[idx] / 2).clamp_min(min_step), step[idx])
            stall[idx] = torch.where(shrink, torch.zeros_like(st), st)
            done[idx] = is_adversarial(logits.argmax(1), yi, ti)
        return x_best
