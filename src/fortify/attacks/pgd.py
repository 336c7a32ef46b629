"""Projected gradient descent (Madry et al. 2018, "Towards deep learning models resistant to
adversarial attacks") for ``linf``, ``l2`` and ``l1``.

Each iteration takes one steepest-ascent step of size ``step_ratio * eps`` for the threat's norm
and projects exactly onto the eps-ball intersected with the input box (``ThreatModel.project``).
For ``l1`` the step is the sparse steepest-ascent direction of SLIDE (Tramer & Boneh 2019,
"Adversarial training and robustness for multiple perturbations"): unit L1 mass spread evenly over
the top ``l1_sparsity`` fraction of coordinates by ``|grad|``, ignoring coordinates already at the
box in the direction of their gradient.

Per sample, the iterate with the highest margin (``max_{j != y} z_j - z_y``, or
``z_t - max_{j != t} z_j`` when targeted) over all iterations and restarts is returned, so a
successful point is kept as soon as one is found. Restarts run only on the points still robust.
Shapes: ``x (B, ...)``, ``y (B,)`` -> ``x_adv (B, ...)``.
"""
from __future__ import annotations

from typing import Callable, cast

import torch

from fortify.attacks._box import Box
from fortify.attacks.base import Attack, Oracle
from fortify.attacks.losses import ce_loss, margin_loss, targeted_margin_loss
from fortify.attacks.registry import ATTACKS
from fortify.attacks.steps import steepest_ascent
from fortify.errors import ConfigError
from fortify.threat import ThreatModel

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def attack_loss(name: str) -> LossFn:
    """Per-sample loss ``f(logits (B, C), y (B,), target (B,) | None) -> (B,)`` to maximise."""

    def ce(z: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        return ce_loss(z, y) if t is None else -ce_loss(z, t)

    def margin(z: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        return margin_loss(z, y) if t is None else targeted_margin_loss(z, t)

    table = {"ce": ce, "margin": margin}
    if name not in table:
        raise ConfigError(f"unknown PGD loss {name!r}; allowed: {', '.join(table)}")
    return table[name]


def success_margin(z: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
    """``(B,)`` margin that is positive exactly when the attack succeeded at logits ``z``."""
    return margin_loss(z, y) if t is None else targeted_margin_loss(z, t)


def slide_mask(g: torch.Tensor, x_adv: torch.Tensor, bounds: Box) -> torch.Tensor:
    """Zero the gradient where ``x_adv`` already sits at the box edge it points to (SLIDE); ``bounds``
    floats or tensors broadcastable to ``x_adv`` (``ThreatModel.box``)."""
    lo, hi = bounds
    tol = 1e-7 * (hi - lo)
    blocked = ((x_adv >= hi - tol) & (g > 0)) | ((x_adv <= lo + tol) & (g < 0))
    return g.masked_fill(blocked, 0.0)


def linf_box(threat: ThreatModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """For ``linf``: the room to the input box around ``x (B, ...)``, ``(lo - x).clamp(max=0)`` and
    ``(hi - x).clamp(min=0)``, computed once per restart instead of once per step; None otherwise (and per-feature threats)."""
    if threat.norm != "linf" or threat.per_feature:
        return None
    lo, hi = threat.bounds
    return (lo - x).clamp(max=0), (hi - x).clamp(min=0)


def project(threat: ThreatModel, x_adv: torch.Tensor, x: torch.Tensor,
            box: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """``threat.project(x_adv, x)`` (``(B, ...)``); for ``linf`` with the cached ``box`` of
    :func:`linf_box`, the same operations in the same order, so bit-identical results."""
    if box is None:
        return threat.project(x_adv, x)
    lo, hi = cast("tuple[float, float]", threat.bounds)  # box is cached for scalar threats only
    delta = torch.maximum(torch.minimum((x_adv - x).clamp(-threat.eps, threat.eps), box[1]), box[0])
    return (x + delta).clamp(lo, hi)


@ATTACKS.register("pgd", help="projected gradient descent (linf / l2 / sparse l1), random restarts")
class PGD(Attack):
    """PGD with random start and restarts.

    Args:
        steps: iterations per restart (>= 1).
        restarts: random restarts (>= 1); later restarts run only on points still robust.
        step_ratio: step size as a fraction of eps; default ``2.5 / steps`` (Madry et al.).
        loss: ``"ce"`` (cross-entropy) or ``"margin"`` (CW margin).
        random_start: start uniformly in the threat set (otherwise at ``x``).
        l1_sparsity: fraction of coordinates moved per L1 step (SLIDE's ``1 - q``).
        early_stop: stop iterating a sample as soon as it is adversarial.
    """

    norms = ("linf", "l2", "l1")
    access = "gradient"
    supports_targeted = True

    def __init__(
        self,
        steps: int = 40,
        restarts: int = 1,
        step_ratio: float | None = None,
        loss: str = "ce",
        random_start: bool = True,
        l1_sparsity: float = 0.05,
        early_stop: bool = True,
    ) -> None:
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")
        if not isinstance(restarts, int) or restarts < 1:
            raise ConfigError(f"restarts must be an integer >= 1, got {restarts!r}")
        if step_ratio is not None and not float(step_ratio) > 0:
            raise ConfigError(f"step_ratio must be > 0, got {step_ratio!r}")
        if not 0 < float(l1_sparsity) <= 1:
            raise ConfigError(f"l1_sparsity must be in (0, 1], got {l1_sparsity!r}")
        attack_loss(loss)
        self.steps = steps
        self.restarts = restarts
        self.step_ratio = 2.5 / steps if step_ratio is None else float(step_ratio)
        self.loss = loss
        self.random_start = bool(random_start)
        self.l1_sparsity = float(l1_sparsity)
        self.early_stop = bool(early_stop)

    def _step(self, g: torch.Tensor, x_adv: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        """Unit steepest-ascent direction ``(B, ...)`` for gradient ``g`` at ``x_adv``."""
        if threat.norm == "l1":
            return steepest_ascent(slide_mask(g, x_adv, threat.box(x_adv)), "l1", self.l1_sparsity)
        return steepest_ascent(g, threat.norm)

    def _run(
        self,
        oracle: Oracle,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        targeted: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Search ``x (B, ...)`` labelled ``y (B,)``; return the best iterate per sample."""
        loss = attack_loss(self.loss)
        alpha = self.step_ratio * threat.eps
        best_x = x.clone()
        best_m = torch.full((x.shape[0],), float("-inf"), device=x.device, dtype=x.dtype)
        for _ in range(self.restarts):
            idx = (best_m <= 0).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            x0, ys = x[idx], y[idx]
            ts = targeted[idx] if targeted is not None else None
            xa = threat.random_init(x0, generator) if self.random_start else x0.clone()
            box = linf_box(threat, x0)
            for k in range(self.steps + 1):
                if k < self.steps:
                    logits, _, g = oracle.value_and_grad(xa, lambda z: loss(z, ys, ts))
                else:
                    logits = oracle.logits(xa)
                m = success_margin(logits, ys, ts)
                better = m > best_m[idx]
                best_m[idx[better]] = m[better]
                best_x[idx[better]] = xa[better]
                if k == self.steps:
                    break
                if self.early_stop:
                    keep = m <= 0
                    if not bool(keep.all()):
                        idx, x0, ys, xa, g = idx[keep], x0[keep], ys[keep], xa[keep], g[keep]
                        ts = ts[keep] if ts is not None else None
                        box = None if box is None else (box[0][keep], box[1][keep])
                        if idx.numel() == 0:
                            break
                xa = project(threat, xa + alpha * self._step(g, xa, threat), x0, box)
        return best_x
