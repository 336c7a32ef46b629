"""Carlini & Wagner L2 attack (Carlini & Wagner 2017, "Towards evaluating the robustness of
neural networks"), minimum-norm.

Change of variables ``x' = lo + (hi - lo) (tanh(w) + 1) / 2`` (box constraint for free), then
per sample minimise with Adam::

    ||x' - x||_2^2 + c * max(z_y - max_{j != y} z_j, -kappa)      (untargeted)
    ||x' - x||_2^2 + c * max(max_{j != t} z_j - z_t, -kappa)      (targeted)

with a per-sample binary search on ``c`` (x10 until the first success, then bisection). The
closest successful iterate (margin > 0 and >= kappa) over all iterations and searches is
returned.

The untargeted objective chases the currently strongest other class, so CW can settle on the
boundary of that class while another class' boundary is closer (a local optimum; on a linear
model it is off by up to the ratio of the two distances). ``n_target_classes = k`` (off by
default, the original attack) additionally runs the pairwise objective ``max(z_y - z_t, -kappa)``
for each of the ``k`` highest wrong classes at the clean input and keeps the closest point. The gradient of the classification term comes from the oracle, the distance term's is
analytic (``2 (x' - x)``), and both are chained through ``dx'/dw``. ``minimum_norm = True``: see
:mod:`fortify.attacks._minnorm`. Shapes: ``x (B, ...)`` -> ``x_adv (B, ...)``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from fortify.attacks._minnorm import MinNormMixin
from fortify.attacks.base import Attack, Oracle
from fortify.attacks.losses import margin_loss, targeted_margin_loss
from fortify.attacks.registry import ATTACKS
from fortify.errors import ConfigError
from fortify.threat import ThreatModel


@ATTACKS.register("cw", help="Carlini-Wagner L2 (tanh-space Adam, binary search on c), minimum-norm")
class CW(MinNormMixin, Attack):
    """CW-L2.

    Args:
        steps: Adam iterations per binary-search step (default 200).
        binary_search_steps: binary-search steps on ``c`` (default 9).
        initial_const: first ``c`` (default 1e-2). lr: Adam step size in w-space (default 1e-2).
        kappa: confidence margin (default 0).
        abort_early: stop a search step when the total loss stalls (checked every ``steps // 10``).
        n_target_classes: ``0`` (default) the original untargeted CW; ``k >= 1`` also runs the
            pairwise objective against each of the top-``k`` wrong classes (``k`` times the cost).
    """

    norms = ("l2",)
    access = "gradient"
    supports_targeted = True
    minimum_norm = True

    def __init__(self, steps: int = 200, binary_search_steps: int = 9, initial_const: float = 1e-2, lr: float = 1e-2,
                 kappa: float = 0.0, abort_early: bool = True, n_target_classes: int = 0) -> None:
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")
        if not isinstance(binary_search_steps, int) or binary_search_steps < 1:
            raise ConfigError(f"binary_search_steps must be an integer >= 1, got {binary_search_steps!r}")
        if not float(initial_const) > 0 or not float(lr) > 0:
            raise ConfigError(f"initial_const and lr must be > 0, got {initial_const!r}, {lr!r}")
        if not float(kappa) >= 0:
            raise ConfigError(f"kappa must be >= 0, got {kappa!r}")
        self.steps, self.binary_search_steps = steps, binary_search_steps
        self.initial_const, self.lr, self.kappa = float(initial_const), float(lr), float(kappa)
        self.abort_early = bool(abort_early)
        if not isinstance(n_target_classes, int) or n_target_classes < 0:
            raise ConfigError(f"n_target_classes must be an integer >= 0, got {n_target_classes!r}")
        self.n_target_classes = n_target_classes

    def _run(self, oracle: Oracle, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             targeted: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
        """Closest successful point per sample of ``x (B, ...)`` (``x`` itself where none)."""
        best = x.clone()
        best_d = torch.full((x.shape[0],), math.inf, dtype=x.dtype, device=x.device)
        if targeted is not None:
            self._search(oracle, x, threat, lambda z: targeted_margin_loss(z, targeted), best, best_d)
            return best
        self._search(oracle, x, threat, lambda z: margin_loss(z, y), best, best_d)
        if self.n_target_classes:
            clean = oracle.logits(x)
            clean.scatter_(1, y[:, None], float("-inf"))
            order = clean.argsort(dim=1, descending=True)
            for k in range(min(self.n_target_classes, oracle.num_classes - 1)):
                t = order[:, k]

                def pairwise(z: torch.Tensor, t: torch.Tensor = t) -> torch.Tensor:
                    return z.gather(1, t[:, None]).squeeze(1) - z.gather(1, y[:, None]).squeeze(1)

                self._search(oracle, x, threat, pairwise, best, best_d)
        return best

    def _search(self, oracle: Oracle, x: torch.Tensor, threat: ThreatModel,
                margin: Callable[[torch.Tensor], torch.Tensor], best: torch.Tensor, best_d: torch.Tensor) -> None:
        """Binary search on ``c`` with Adam in tanh space for ``x (B, ...)``; ``margin(logits) (B,)``
        is > 0 exactly when a point counts as successful. Updates ``best / best_d (B,)`` in place."""
        b = x.shape[0]
        lo, hi = threat.box(x)
        span = hi - lo
        free = threat.free(x)
        view = (b,) + (1,) * (x.dim() - 1)
        w0 = torch.atanh(((x - lo) / span * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        const = torch.full((b,), self.initial_const, dtype=x.dtype, device=x.device)
        lower = torch.zeros_like(const)
        upper = torch.full_like(const, math.inf)
        kappa = self.kappa
        check = max(self.steps // 10, 1)
        for _ in range(self.binary_search_steps):
            w = w0.clone()
            m1, m2 = torch.zeros_like(w), torch.zeros_like(w)
            hit_round = torch.zeros(b, dtype=torch.bool, device=x.device)
            prev = math.inf
            for it in range(1, self.steps + 1):
                th = torch.tanh(w)
                xa = lo + span * (th + 1) / 2
                xa = xa if free is None else torch.where(free, xa, x)  # immutable features stay put
                logits, pen, g_cls = oracle.value_and_grad(xa, lambda z: (-margin(z)).clamp_min(-kappa))
                diff = xa - x
                dist = diff.flatten(1).norm(dim=1)
                m_now = margin(logits)  # of this iterate, before the update
                ok = (m_now > 0) & (m_now >= kappa)
                hit_round |= ok
                closer = ok & (dist < best_d)
                best[closer], best_d[closer] = xa[closer], dist[closer]
                grad_w = (2 * diff + const.view(view) * g_cls) * (span / 2) * (1 - th * th)
                m1 = 0.9 * m1 + 0.1 * grad_w
                m2 = 0.999 * m2 + 0.001 * grad_w * grad_w
                w = w - self.lr * (m1 / (1 - 0.9**it)) / ((m2 / (1 - 0.999**it)).sqrt() + 1e-8)
                if self.abort_early and it % check == 0:
                    total = float((dist**2 + const * pen).sum())
                    if total > prev * 0.9999:
                        break
                    prev = total
            upper = torch.where(hit_round, torch.minimum(upper, const), upper)
            lower = torch.where(hit_round, lower, torch.maximum(lower, const))
            const = torch.where(torch.isfinite(upper), (lower + upper) / 2, const * 10)
