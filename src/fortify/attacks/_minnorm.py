"""Shared pieces of fortify's minimum-norm attacks (FAB, CW-L2, DeepFool).

**Minimum-norm API (one convention for every minimum-norm attack).** Attacks are stateless, so
the per-sample minimal distances are not stored on the attack. Instead every minimum-norm
attack (``minimum_norm = True``) inherits :meth:`MinNormMixin.min_norm`, which runs the attack
with an uncapped threat model (``eps`` = the diameter of the input box in that norm, so the
projection never binds) and returns ``threat.distance(x_adv, x)`` per sample: ``0`` for points
that are already misclassified (or already on target), ``inf`` where the attack failed.
When such an attack is called with a finite ``threat.eps`` it still searches for the smallest
perturbation; the base class then projects the result onto the eps-ball and scores it, so a
point only counts as broken if an adversarial point *within eps* was found.

This module also holds the exact minimum-norm step onto a linearised decision boundary inside
the input box (used by FAB, Croce & Hein 2020).
"""
from __future__ import annotations

import math

import torch

from fortify.attacks._box import Box
from torch import nn

from fortify.errors import InputError
from fortify.threat import NORMS, ThreatModel


def box_diameter(norm: str, bounds: tuple[float, float], dim: int) -> float:
    """Largest distance between two points of the box ``[lo, hi]^dim`` in ``norm``."""
    side = float(bounds[1] - bounds[0])
    return {"linf": side, "l2": side * math.sqrt(dim), "l1": side * dim}[norm]


class MinNormMixin:
    """Adds :meth:`min_norm` to an :class:`~fortify.attacks.base.Attack` subclass."""

    def min_norm(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        norm: str,
        *,
        bounds: tuple[float, float] = (0.0, 1.0),
        targeted: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Per-sample smallest adversarial distance found, shape ``(N,)``.

        ``x (N, ...)`` in ``bounds``, ``y (N,)``. Runs the attack with ``eps`` equal to the box
        diameter (no cap). Returns ``0`` where ``x`` is already misclassified (or on target) and
        ``inf`` where no adversarial point was found.
        """
        if norm not in NORMS:
            raise InputError(f"unknown norm {norm!r}; allowed: {', '.join(NORMS)}")
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise InputError("x must be a batched tensor (N, ...)")
        dim = int(x[0].numel())
        threat = ThreatModel(norm, box_diameter(norm, bounds, dim) * (1 + 1e-6), bounds)
        res = self(model, x, y, threat, targeted=targeted, generator=generator)  # type: ignore[operator]
        dist = threat.distance(res.x_adv, x)
        return torch.where(res.success, dist, torch.full_like(dist, math.inf))


def hyperplane_box_step(
    p: torch.Tensor, w: torch.Tensor, c: torch.Tensor, norm: str, bounds: "Box"
) -> torch.Tensor:
    """Minimum-norm step ``d`` with ``<w, d> = c`` and ``lo <= p + d <= hi``, exactly.

    ``p, w`` are ``(B, D)``, ``c`` is ``(B,)``. Where the hyperplane does not meet the box the
    step goes as far as the box allows towards it (every useful coordinate saturated).

    With ``s_i = sign(c w_i)`` and ``cap_i`` the room to the box in direction ``s_i``:

    * linf: ``d_i = s_i min(t, cap_i)``; ``t`` solves ``sum |w_i| min(t, cap_i) = |c|``.
    * l2: ``d_i = s_i min(lam |w_i|, cap_i)`` (KKT); ``lam`` solves ``sum |w_i| min(lam |w_i|, cap_i) = |c|``.
    * l1: fill coordinates by decreasing ``|w_i|`` up to their caps until ``|c|`` is reached.

    Each equation is piecewise linear and increasing; it is solved exactly from its sorted
    breakpoints. ``bounds``: floats, or per-sample ``(B, D)`` tensors (``attacks._box``). Returns ``d (B, D)``.
    """
    lo, hi = bounds
    s = torch.sign(c)[:, None] * torch.sign(w)
    cap = torch.where(s > 0, hi - p, p - lo).clamp_min(0)
    aw = w.abs()
    target = c.abs()[:, None]
    if norm == "l1":
        order = torch.argsort(aw, dim=1, descending=True)
        aw_s, cap_s = aw.gather(1, order), cap.gather(1, order)
        gain = aw_s * cap_s
        before = torch.cumsum(gain, dim=1) - gain  # achieved before coordinate k
        take = ((target - before) / aw_s.clamp_min(1e-30)).clamp_min(0)
        mag_s = torch.minimum(take, cap_s) * (aw_s > 0)
        mag = torch.zeros_like(mag_s).scatter(1, order, mag_s)
        return s * mag
    rate = torch.ones_like(aw) if norm == "linf" else aw
    slope_i = aw * rate  # d g / d t while coordinate i is not saturated
    bp = torch.where(slope_i > 0, cap / rate.clamp_min(1e-30), torch.full_like(cap, math.inf))
    order = torch.argsort(bp, dim=1)
    bp_s, cap_s, aw_s, sl_s = (t.gather(1, order) for t in (bp, cap, aw, slope_i))
    sat_before = torch.cumsum(aw_s * cap_s, dim=1) - aw_s * cap_s  # saturated mass before k
    slope_from = sl_s.flip(1).cumsum(1).flip(1)  # slope of the unsaturated coordinates k..D-1
    finite_bp = torch.where(torch.isfinite(bp_s), bp_s, torch.zeros_like(bp_s))
    g_at = sat_before + finite_bp * slope_from  # g at each breakpoint
    g_at = torch.where(torch.isfinite(bp_s), g_at, torch.full_like(g_at, math.inf))
    reach = g_at >= target
    k = torch.argmax(reach.to(torch.int8), dim=1, keepdim=True)
    feasible = reach.any(dim=1, keepdim=True)
    tpar = (target - sat_before.gather(1, k)) / slope_from.gather(1, k).clamp_min(1e-30)
    tpar = torch.where(feasible, tpar, torch.full_like(tpar, math.inf))
    mag = torch.where(slope_i > 0, torch.minimum(tpar * rate, cap), torch.zeros_like(cap))
    return s * mag
