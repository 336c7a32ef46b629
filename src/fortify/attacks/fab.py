"""FAB: fast adaptive boundary attack (Croce & Hein 2020, "Minimally distorted adversarial
examples with a fast adaptive boundary attack"), minimum-norm, for ``linf``, ``l2`` and ``l1``.

Each iteration linearises the decision boundary ``f_t - f_y = 0`` at the current iterate ``x_k``
(``f`` logits, ``t`` the target class: FAB-T, or the closest class of the linearisation for the
untargeted variant), then takes the exact minimum-norm steps onto that hyperplane inside the box
from ``x_k`` (``d_k``) and from the original point ``x`` (``d_0``), and combines them::

    alpha   = min(||d_k|| / (||d_k|| + ||d_0||), alpha_max)
    x_{k+1} = clip((1 - alpha) (x_k + eta d_k) + alpha (x + eta d_0))

(``eta``: extrapolation). When ``x_{k+1}`` is adversarial it is recorded if it is the closest so
far, and then pulled back towards ``x``: ``x_{k+1} = x + beta (x_{k+1} - x)``. The first run starts
at ``x``; further restarts start at a random point at half the best distance found (capped at
eps). FAB-T runs once per target class among the ``n_target_classes`` highest clean logits
(AutoAttack's FAB-T). ``minimum_norm = True``: see :mod:`fortify.attacks._minnorm` for
:meth:`min_norm` and how ``threat.eps`` caps the result. Shapes: ``x (B, ...)`` -> ``(B, ...)``.
"""
from __future__ import annotations

import math

import torch

from fortify.attacks._box import clamp, flat_box, sample_box
from fortify.attacks._minnorm import MinNormMixin, hyperplane_box_step
from fortify.attacks.base import Attack, Oracle
from fortify.attacks.losses import targeted_margin_loss
from fortify.attacks.registry import ATTACKS
from fortify.errors import ConfigError
from fortify.threat import ThreatModel


def _norm(d: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-row norm of ``d (B, D)`` -> ``(B,)``."""
    if norm == "linf":
        return d.abs().amax(dim=1)
    return d.norm(dim=1) if norm == "l2" else d.abs().sum(dim=1)


def _dual(w: torch.Tensor, norm: str) -> torch.Tensor:
    """Dual norm of rows of ``w (..., D)``: linf -> l1, l2 -> l2, l1 -> linf."""
    if norm == "linf":
        return w.abs().sum(dim=-1)
    return w.norm(dim=-1) if norm == "l2" else w.abs().amax(dim=-1)


@ATTACKS.register("fab", help="FAB-T minimum-norm boundary attack (Croce & Hein 2020), linf / l2 / l1")
class FAB(MinNormMixin, Attack):
    """FAB / FAB-T.

    Args:
        steps: iterations per run (default 100).
        restarts: runs per target class (first from ``x``, then random starts).
        n_target_classes: FAB-T targets (top-k wrong classes at the clean point); ``0`` selects the
            untargeted FAB, which linearises every class (``C - 1`` gradients per iteration).
        alpha_max: cap on the bias towards the original point (0.1).
        eta: extrapolation of the projection step (1.05). beta: backward step (0.9).
    """

    norms = ("linf", "l2", "l1")
    access = "gradient"
    supports_targeted = True
    minimum_norm = True

    def __init__(self, steps: int = 100, restarts: int = 1, n_target_classes: int = 9, alpha_max: float = 0.1,
                 eta: float = 1.05, beta: float = 0.9) -> None:
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")
        if not isinstance(restarts, int) or restarts < 1:
            raise ConfigError(f"restarts must be an integer >= 1, got {restarts!r}")
        if not isinstance(n_target_classes, int) or n_target_classes < 0:
            raise ConfigError(f"n_target_classes must be an integer >= 0, got {n_target_classes!r}")
        if not 0 <= float(alpha_max) <= 1:
            raise ConfigError(f"alpha_max must be in [0, 1], got {alpha_max!r}")
        if not float(eta) >= 1:
            raise ConfigError(f"eta must be >= 1, got {eta!r}")
        if not 0 < float(beta) <= 1:
            raise ConfigError(f"beta must be in (0, 1], got {beta!r}")
        self.steps, self.restarts, self.n_target_classes = steps, restarts, n_target_classes
        self.alpha_max, self.eta, self.beta = float(alpha_max), float(eta), float(beta)

    # ------------------------------------------------------------------ pieces
    @staticmethod
    def _boundaries(oracle: Oracle, x: torch.Tensor, y: torch.Tensor, classes: torch.Tensor, explicit: bool
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Differences ``f_j - f_y`` ``(B, K)`` and their input gradients ``(B, K, D)`` for the
        classes ``classes (B, K)``; one gradient evaluation per column. For ``explicit`` targets
        the difference is ``f_t - max_{j != t} f_j`` (the boundary that must be crossed)."""
        dfs, dgs = [], []
        for k in range(classes.shape[1]):
            cls = classes[:, k]

            def diff(z: torch.Tensor, cls: torch.Tensor = cls) -> torch.Tensor:
                if explicit:
                    return targeted_margin_loss(z, cls)
                return z.gather(1, cls[:, None]).squeeze(1) - z.gather(1, y[:, None]).squeeze(1)

            _, df, dg = oracle.value_and_grad(x, diff)
            dfs.append(df)
            dgs.append(dg.reshape(x.shape[0], -1))
        return torch.stack(dfs, 1), torch.stack(dgs, 1)

    def _single(self, oracle: Oracle, x: torch.Tensor, y: torch.Tensor, classes: torch.Tensor,
                goal: torch.Tensor | None, threat: ThreatModel, x_init: torch.Tensor,
                best: torch.Tensor, best_d: torch.Tensor) -> None:
        """One FAB run on ``x (B, ...)`` from ``x_init``; candidate classes ``classes (B, K)``;
        success means ``argmax = goal`` (targeted) or ``argmax != y``. Updates ``best (B, ...)``
        and ``best_d (B,)`` in place with the closest adversarial points."""
        b = x.shape[0]
        shape = x.shape
        xf = x.reshape(b, -1)
        x1 = x_init.reshape(b, -1).clone()
        rows = torch.arange(b, device=x.device)
        box = flat_box(sample_box(threat, x), b)
        for _ in range(self.steps):
            df, dg = self._boundaries(oracle, x1.reshape(shape), y, classes, goal is not None)
            j = (df.abs() / (_dual(dg, threat.norm) + 1e-12)).argmin(dim=1)
            f, w = df[rows, j], dg[rows, j]
            d1 = hyperplane_box_step(x1, w, -f, threat.norm, box)
            c0 = -f - (w * (xf - x1)).sum(dim=1)
            d0 = hyperplane_box_step(xf, w, c0, threat.norm, box)
            a1 = _norm(d1, threat.norm).clamp_min(1e-8)
            a0 = _norm(d0, threat.norm).clamp_min(1e-8)
            alpha = (a1 / (a1 + a0)).clamp(0, self.alpha_max)[:, None]
            x1 = clamp((1 - alpha) * (x1 + self.eta * d1) + alpha * (xf + self.eta * d0), box)
            pred = oracle.logits(x1.reshape(shape)).argmax(dim=1)
            hit = pred == goal if goal is not None else pred != y
            if bool(hit.any()):
                dist = _norm(x1 - xf, threat.norm)
                closer = hit & (dist < best_d)
                best[closer] = x1[closer].reshape((-1,) + shape[1:])
                best_d[closer] = dist[closer]
                x1[hit] = xf[hit] + self.beta * (x1[hit] - xf[hit])

    def _random_start(self, x: torch.Tensor, radius: torch.Tensor, threat: ThreatModel,
                      generator: torch.Generator | None) -> torch.Tensor:
        """A random point at distance ``radius (B,)`` (before box clipping) around ``x``."""
        t = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        unit = t / _norm(t.reshape(x.shape[0], -1), threat.norm).clamp_min(1e-12).reshape((-1,) + (1,) * (x.dim() - 1))
        return threat.clip(x + unit * radius.reshape((-1,) + (1,) * (x.dim() - 1)), x)

    def _run(self, oracle: Oracle, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             targeted: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
        """Closest adversarial point found per sample of ``x (B, ...)`` (``x`` where none)."""
        b = x.shape[0]
        best = x.clone()
        best_d = torch.full((b,), math.inf, dtype=x.dtype, device=x.device)
        runs: list[tuple[torch.Tensor, torch.Tensor | None]]  # (candidate classes (B, k), target labels or None)
        if targeted is not None:
            runs = [(targeted[:, None], targeted)]
        else:
            clean = oracle.logits(x)
            clean.scatter_(1, y[:, None], float("-inf"))
            order = clean.argsort(dim=1, descending=True)[:, : oracle.num_classes - 1]
            if self.n_target_classes == 0:
                runs = [(order, None)]
            else:
                runs = [(order[:, k : k + 1], None) for k in range(min(self.n_target_classes, order.shape[1]))]
        for classes, goal in runs:
            for r in range(self.restarts):
                if r == 0:
                    start = x
                else:
                    radius = 0.5 * torch.clamp(best_d, max=threat.eps)
                    start = self._random_start(x, radius, threat, generator)
                self._single(oracle, x, y, classes, goal, threat, start, best, best_d)
        return best
