"""HopSkipJump (Chen, Jordan & Wainwright 2020, "HopSkipJumpAttack: a query-efficient
decision-based attack", IEEE S&P): minimum-norm attack from hard labels only.

Per sample, starting from any adversarial point (a batch peer already classified as the target in
targeted mode, else uniform noise in the box), each iteration

1. binary-searches the segment (``l2``: the blend ``(1 - a) x + a x_adv``; ``linf``: the clip of
   ``x_adv`` to the ``linf`` ball of radius ``a``) to the decision boundary, to tolerance ``theta``
   (``gamma / d^{3/2}`` for ``l2``, ``gamma / d^2`` for ``linf``);
2. estimates the boundary normal by Monte-Carlo: ``n_t = min(init_evals * sqrt(t), max_evals)``
   random unit directions ``u_b`` (Gaussian for ``l2``, uniform for ``linf``) probed at radius
   ``delta_t`` (``0.1 * box`` at ``t = 1``, then ``gamma / d * dist``), ``grad ~ mean((phi_b -
   mean phi) u_b)`` with ``phi = +-1`` the decisions (the baseline-corrected estimator);
3. steps along the estimate (``sign`` of it for ``linf``) by a geometric search: ``xi = dist /
   sqrt(t)``, halved until the point is adversarial; then back to 1.

The best (smallest-distance) adversarial point is kept per sample; the base class projects it onto
the threat model, so success means "adversarial within eps". Everything is batched: every query
of a phase goes to the model in one call for all still-active samples. Shapes: ``x (B, ...)``.
"""
from __future__ import annotations

import math

import torch

from fortify.attacks._box import Box, clamp, flat_box, sample_box, span
from fortify.attacks._box import rows as box_rows
from fortify.attacks._blackbox import (
    QueryBudget,
    check_positive_float,
    check_positive_int,
    flat,
    is_adversarial,
    lp_norm,
    peer_starts,
    view_b,
)
from fortify.attacks.base import Attack, Oracle
from fortify.attacks.registry import ATTACKS
from fortify.registry import renamed_kwargs
from fortify.threat import ThreatModel

_MAX_PROBE_ELEMENTS = 1 << 24
_MAX_HALVINGS = 20


@ATTACKS.register("hopskipjump", help="HopSkipJump: decision-based minimum-norm attack (l2, linf)")
class HopSkipJump(Attack):
    """HopSkipJump (Chen et al. 2020), labels only, ``l2`` and ``linf``, minimum-norm.

    Args:
        queries: query budget per sample inside the search; a sample stops when the budget
            cannot pay a full iteration.
        steps: the most iterations.
        init_evals / max_evals: Monte-Carlo probes per gradient estimate at iteration ``t`` are
            ``min(init_evals * sqrt(t), max_evals)``.
        gamma: sets the binary-search tolerance ``theta`` and the probe radius.
        init_tries: uniform-noise draws tried to find a starting adversarial point.
        stop_at_eps: stop a sample as soon as its adversarial point is within ``threat.eps``
            (for cascades); by default the distance keeps shrinking until budget or ``steps``.
    """

    norms = ("l2", "linf")
    access = "decision"
    supports_targeted = True
    minimum_norm = True

    @renamed_kwargs(n_queries="queries")
    def __init__(
        self,
        queries: int = 5000,
        steps: int = 64,
        init_evals: int = 100,
        max_evals: int = 10000,
        gamma: float = 1.0,
        init_tries: int = 100,
        stop_at_eps: bool = False,
    ) -> None:
        self.queries = check_positive_int("queries", queries)
        self.steps = check_positive_int("steps", steps)
        self.init_evals = check_positive_int("init_evals", init_evals)
        self.max_evals = check_positive_int("max_evals", max_evals)
        self.gamma = check_positive_float("gamma", gamma)
        self.init_tries = check_positive_int("init_tries", init_tries)
        self.stop_at_eps = bool(stop_at_eps)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _toward(x: torch.Tensor, xa: torch.Tensor, a: torch.Tensor, norm: str) -> torch.Tensor:
        """Point at parameter ``a (R,)`` between ``x`` and ``x_adv`` (blend for l2, clip for linf)."""
        a = view_b(a, x)
        if norm == "l2":
            return (1 - a) * x + a * xa
        return torch.maximum(torch.minimum(xa, x + a), x - a)

    def _binary_search(
        self, q: QueryBudget, x: torch.Tensor, xa: torch.Tensor, idx: torch.Tensor,
        y: torch.Tensor, t: torch.Tensor | None, norm: str, theta: float,
    ) -> torch.Tensor:
        """Boundary points ``(R, ...)`` between ``x`` and adversarial ``xa`` (adversarial side)."""
        r = x.shape[0]
        if norm == "l2":
            high = torch.ones(r, device=x.device, dtype=x.dtype)
            thr = torch.full_like(high, theta)
        else:
            high = lp_norm(xa - x, "linf")
            thr = torch.clamp(high * theta, max=theta).clamp_min(1e-12)
        low = torch.zeros_like(high)
        while True:
            act = ((high - low) / thr > 1).nonzero().squeeze(1)
            if act.numel() == 0:
                break
            mid = (high[act] + low[act]) / 2
            pts = self._toward(x[act], xa[act], mid, norm)
            adv = is_adversarial(q.predict(pts, idx[act]), y[act], None if t is None else t[act])
            high[act] = torch.where(adv, mid, high[act])
            low[act] = torch.where(adv, low[act], mid)
        return self._toward(x, xa, high, norm)

    def _gradient(
        self, q: QueryBudget, xb: torch.Tensor, idx: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None,
        n_evals: int, delta: torch.Tensor, norm: str, bounds: Box, gen: torch.Generator | None,
    ) -> torch.Tensor:
        """Monte-Carlo estimate ``(R, ...)`` (unit l2 norm) of the boundary normal at ``xb``; ``bounds``
        floats or per-row boxes ``(R, ...)`` (immutable features ``lo = hi``: never probed)."""
        r, d = xb.shape[0], flat(xb).shape[1]
        lo, hi = flat_box(bounds, r)
        movable = None
        if isinstance(lo, torch.Tensor) and isinstance(hi, torch.Tensor):
            movable = (hi > lo).to(xb.dtype)[:, None, :]
            bounds = (lo[:, None, :], hi[:, None, :])
        chunk = max(1, min(n_evals, _MAX_PROBE_ELEMENTS // max(1, r * d)))
        base = flat(xb)[:, None, :]
        dl = delta[:, None, None]
        sum_rv = torch.zeros_like(flat(xb))
        sum_frv = torch.zeros_like(flat(xb))
        sum_f = torch.zeros(r, device=xb.device, dtype=xb.dtype)
        left = n_evals
        while left > 0:
            k = min(chunk, left)
            left -= k
            if norm == "l2":
                rv = torch.randn((r, k, d), generator=gen, device=xb.device, dtype=xb.dtype)
            else:
                rv = torch.rand((r, k, d), generator=gen, device=xb.device, dtype=xb.dtype) * 2 - 1
            rv = rv if movable is None else rv * movable
            rv = rv / rv.norm(dim=2, keepdim=True).clamp_min(1e-12)
            probes = clamp(base + dl * rv, bounds)
            rv = (probes - base) / dl
            rows = probes.reshape((r * k,) + xb.shape[1:])
            owner = idx.repeat_interleave(k)
            tt = None if t is None else t.repeat_interleave(k)
            f = is_adversarial(q.predict(rows, owner), y.repeat_interleave(k), tt).to(xb.dtype).reshape(r, k) * 2 - 1
            sum_rv += rv.sum(dim=1)
            sum_frv += (f[:, :, None] * rv).sum(dim=1)
            sum_f += f.sum(dim=1)
        mean_f = sum_f / n_evals
        # baseline-corrected estimator: mean((f - mean f) rv); all-agree cases use +-mean(rv)
        g = (sum_frv - mean_f[:, None] * sum_rv) / n_evals
        agree = mean_f.abs() == 1
        g = torch.where(agree[:, None], mean_f[:, None] * sum_rv / n_evals, g)
        g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return g.reshape(xb.shape)

    def _starting_points(
        self, q: QueryBudget, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None, gen: torch.Generator | None,
        bounds: Box,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_adv (B, ...), found (B,))``: a batch peer classified as the target (targeted mode),
        else uniform noise in the box, ``init_tries`` draws at most (only unfound samples query)."""
        if t is not None and self.queries > 1:
            x_adv, found = peer_starts(q, x, t)
        else:
            x_adv, found = x.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.init_tries):
            todo = (~found & (q.remaining() > 0)).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            lo_t, hi_t = box_rows(bounds, todo)
            noise = torch.rand(x[todo].shape, generator=gen, device=x.device, dtype=x.dtype) * (hi_t - lo_t) + lo_t
            ok = is_adversarial(q.predict(noise, todo), y[todo], None if t is None else t[todo])
            x_adv[todo[ok]] = noise[ok]
            found[todo[ok]] = True
        return x_adv, found

    # ------------------------------------------------------------------ search
    def _run(
        self,
        oracle: Oracle,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        targeted: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """HopSkipJump on ``x (B, ...)``; returns the closest adversarial point per sample."""
        if threat.eps == 0:  # x itself is correctly classified: nothing to find
            return x.clone()
        b, d = x.shape[0], flat(x).shape[1]
        norm, bounds = threat.norm, sample_box(threat, x)
        width = span(threat.bounds)
        theta = self.gamma / (d * math.sqrt(d)) if norm == "l2" else self.gamma / d**2
        # bisection steps: log2(range / tolerance); the linf range is at most the box width
        bs_cost = int(math.ceil(math.log2(max(1.0, width) / theta))) + 2
        q = QueryBudget(oracle, b, self.queries, x.device)
        x_adv, found = self._starting_points(q, x, y, targeted, generator, bounds)
        alive = found & (q.remaining() >= bs_cost)
        idx = alive.nonzero().squeeze(1)
        if idx.numel():  # no start at all (e.g. an unreachable target): nothing to refine
            tt = None if targeted is None else targeted[idx]
            x_adv[idx] = self._binary_search(q, x[idx], x_adv[idx], idx, y[idx], tt, norm, theta)
        dist = lp_norm(x_adv - x, norm)
        best = x_adv.clone()  # x itself where no adversarial start was found
        best_dist = torch.where(found, dist, torch.full_like(dist, float("inf")))
        for step in range(1, self.steps + 1):
            n_evals = int(min(self.init_evals * math.sqrt(step), self.max_evals))
            need = n_evals + _MAX_HALVINGS + bs_cost
            alive &= q.remaining() >= need
            if self.stop_at_eps:
                alive &= best_dist > threat.eps
            idx = alive.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            yi, ti = y[idx], None if targeted is None else targeted[idx]
            xi, xb, di = x[idx], x_adv[idx], dist[idx]
            delta = torch.full_like(di, 0.1 * width) if step == 1 else self.gamma / d * di
            delta = delta.clamp_min(1e-8)
            box = box_rows(bounds, idx)
            g = self._gradient(q, xb, idx, yi, ti, n_evals, delta, norm, box, generator)
            update = g.sign() if norm == "linf" else g
            # geometric step-size search: xi = dist / sqrt(t), halved until adversarial
            xi_step = di / math.sqrt(step)
            pending = torch.ones_like(di, dtype=torch.bool)
            for _ in range(_MAX_HALVINGS):
                p = pending.nonzero().squeeze(1)
                if p.numel() == 0:
                    break
                cand = clamp(xb[p] + view_b(xi_step[p], xb[p]) * update[p], box_rows(box, p))
                ok = is_adversarial(q.predict(cand, idx[p]), yi[p], None if ti is None else ti[p])
                pending[p[ok]] = False
                xi_step[p[~ok]] = xi_step[p[~ok]] / 2
            moved = clamp(xb + view_b(xi_step, xb) * update, box)
            moved = torch.where(view_b(pending, xb), xb, moved)
            new = self._binary_search(q, xi, moved, idx, yi, ti, norm, theta)
            x_adv[idx] = new
            dist[idx] = lp_norm(new - xi, norm)
            improved = dist[idx] < best_dist[idx]
            best[idx] = torch.where(view_b(improved, new), new, best[idx])
            best_dist[idx] = torch.where(improved, dist[idx], best_dist[idx])
        return best
