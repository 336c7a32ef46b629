"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks") for ``linf`` and ``l2``: ``apgd`` (CE or DLR loss) and
``apgd-t`` (targeted DLR over the top-k classes).

Per iteration (eta: per-sample step size, initially ``2 eps``; ``P``: exact projection)::

    z       = P(x_k + eta * s(grad))                      s: steepest-ascent direction of the norm
    x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))   a = 1 at k = 0, else ``momentum`` (0.75)

At the checkpoints ``w_j = ceil(p_j N)`` with ``p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` the step size of a sample is halved (and it
restarts from its best point) when either

1. the loss increased in fewer than ``rho * (w_j - w_{j-1})`` of the steps since ``w_{j-1}``, or
2. its step size was not halved at ``w_{j-1}`` and its best loss did not improve since then.

``l1`` follows l1-APGD (Croce & Hein 2021, "Mind the box: l1-APGD for sparse adversarial
attacks on image classifiers"): the step moves unit L1 mass spread over the top ``k`` coordinates
by ``|grad|`` (ignoring coordinates blocked by the box), ``k`` adapts to the sparsity of the best
point (``k = ||x_best - x||_0 / 1.5``, initially 20% of the coordinates), the initial step is
``eps`` and every ``max(0.04 N, 1)`` iterations the step resets to ``eps`` (and the iterate to the
best point) when the best point got >5% sparser, else shrinks by 1.5 (never below ``eps / 10``).

Samples that become adversarial are stored and drop out; restarts run on the rest. Shapes:
``x (B, ...)``, ``y (B,)`` -> ``x_adv (B, ...)``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from fortify.attacks._dlr import dlr_loss, dlr_targeted_loss, strongest_other
from fortify.attacks._box import Box
from fortify.attacks.base import Attack, Oracle
from fortify.attacks.losses import ce_loss
from fortify.attacks.registry import ATTACKS
from fortify.attacks.pgd import slide_mask
from fortify.attacks.steps import steepest_ascent
from fortify.errors import ConfigError
from fortify.threat import ThreatModel

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, row index) -> (B,)
Success = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def checkpoints(steps: int) -> list[int]:
    """Iteration counts ``w_j`` (j >= 1, ``w_j <= steps``) after which step sizes are checked."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    out = sorted({math.ceil(round(pj * steps, 6)) for pj in p[1:]})
    return [w for w in out if 1 <= w <= steps]


def halving_decision(
    loss_window: torch.Tensor,
    best_now: torch.Tensor,
    best_last: torch.Tensor,
    reduced_last: torch.Tensor,
    rho: float,
) -> torch.Tensor:
    """Which samples halve their step at a checkpoint ``(B,)`` bool.

    ``loss_window (h + 1, B)``: losses at iterations ``w_{j-1} .. w_j`` (h = w_j - w_{j-1});
    ``best_now / best_last (B,)``: best loss at ``w_j`` / ``w_{j-1}``; ``reduced_last (B,)``:
    whether the step was halved at ``w_{j-1}``.
    """
    h = loss_window.shape[0] - 1
    increases = (loss_window[1:] > loss_window[:-1]).sum(dim=0)
    cond1 = increases < rho * h
    cond2 = ~reduced_last & (best_now <= best_last)
    return cond1 | cond2


def l1_direction(g: torch.Tensor, x_adv: torch.Tensor, frac: torch.Tensor, bounds: Box) -> torch.Tensor:
    """Unit-L1 sparse ascent direction ``(B, ...)``: sign of ``g`` on the top ``frac (B,)``
    fraction of coordinates by ``|g|`` that the box still lets move (l1-APGD)."""
    b = g.shape[0]
    flat = slide_mask(g, x_adv, bounds).reshape(b, -1)
    n = flat.shape[1]
    a = flat.abs()
    k = (frac * n).long().clamp(1, n)
    thresh = a.sort(dim=1, descending=True).values.gather(1, (k - 1)[:, None])
    mask = (a >= thresh) & (a > 0)
    d = flat.sign() * mask / mask.sum(dim=1, keepdim=True).clamp_min(1)
    return d.reshape(g.shape)


def apgd_run(
    oracle: Oracle,
    x: torch.Tensor,
    loss: Loss,
    success: Success,
    threat: ThreatModel,
    steps: int,
    rho: float,
    momentum: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One APGD run on ``x (B, ...)`` from a random start.

    ``loss(logits, rows)`` and ``success(logits, rows)`` get the logits of the rows ``rows`` of
    the batch. Returns ``(x_out, succeeded (B,), best_loss (B,))``: the first adversarial iterate
    where one was found, else the highest-loss iterate.
    """
    b = x.shape[0]
    view = (b,) + (1,) * (x.dim() - 1)
    x_adv = threat.random_init(x, generator)
    rows = torch.arange(b, device=x.device)
    logits, cur, grad = oracle.value_and_grad(x_adv, lambda z: loss(z, rows))
    hist = torch.empty((steps + 1, b), dtype=cur.dtype, device=x.device)
    hist[0] = cur
    out = x_adv.clone()
    done = success(logits, rows)
    x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), cur.clone()
    l1 = threat.norm == "l1"
    eta0 = (1.0 if l1 else 2.0) * threat.eps
    eta = torch.full(view, eta0, dtype=x.dtype, device=x.device)
    n_fts = x[0].numel()
    frac = torch.full((b,), 0.2, dtype=x.dtype, device=x.device)  # l1: fraction of coordinates moved
    sp_old = torch.full((b,), float(n_fts), dtype=x.dtype, device=x.device)
    l1_every = max(int(0.04 * steps), 1)
    x_prev = x_adv.clone()
    best_last, reduced_last = loss_best.clone(), torch.zeros(b, dtype=torch.bool, device=x.device)
    ckpts, last_ck = checkpoints(steps), 0
    act = (~done).nonzero().squeeze(1)
    for i in range(steps):
        if act.numel() == 0:
            break
        xa, xs = x_adv[act], x[act]
        a = 1.0 if i == 0 else momentum
        if l1:
            direction = l1_direction(grad[act], xa, frac[act], threat.box(xa))
        else:
            direction = steepest_ascent(grad[act], threat.norm)
        z = threat.project(xa + eta[act] * direction, xs)
        new = threat.project(xa + a * (z - xa) + (1 - a) * (xa - x_prev[act]), xs)
        x_prev[act] = xa
        logits, cur, g = oracle.value_and_grad(new, lambda zz: loss(zz, act))
        x_adv[act], grad[act], hist[i + 1, act] = new, g, cur
        hit = success(logits, act)
        out[act[hit]] = new[hit]
        done[act[hit]] = True
        up = cur > loss_best[act]
        iu = act[up]
        x_best[iu], grad_best[iu], loss_best[iu] = new[up], g[up], cur[up]
        if l1 and (i + 1) % l1_every == 0:
            sp = ((x_best[act] - x[act]).reshape(act.numel(), -1) != 0).sum(dim=1).to(x.dtype)
            sparser = sp / sp_old[act] < 0.95
            frac[act] = (sp / n_fts / 1.5).clamp(min=1.0 / n_fts)
            e = torch.where(sparser.view((-1,) + view[1:]), torch.full_like(eta[act], eta0), eta[act] / 1.5)
            eta[act] = e.clamp(eta0 / 10, eta0)
            sp_old[act] = sp
            ir = act[sparser]
            x_adv[ir], grad[ir] = x_best[ir], grad_best[ir]
        elif not l1 and i + 1 in ckpts:
            w = i + 1
            halve = halving_decision(hist[last_ck : w + 1, act], loss_best[act], best_last[act], reduced_last[act], rho)
            ih = act[halve]
            eta[ih] /= 2
            x_adv[ih], grad[ih] = x_best[ih], grad_best[ih]
            reduced_last[act] = halve
            best_last[act] = loss_best[act]
            last_ck = w
        act = act[~hit]
    out[~done] = x_best[~done]
    return out, done, loss_best


class _APGDBase(Attack):
    """Shared validation and restart loop of APGD and APGD-T."""

    norms = ("linf", "l2", "l1")
    access = "gradient"
    supports_targeted = True

    def __init__(self, steps: int, restarts: int, rho: float, momentum: float) -> None:
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")
        if not isinstance(restarts, int) or restarts < 1:
            raise ConfigError(f"restarts must be an integer >= 1, got {restarts!r}")
        if not 0 < float(rho) <= 1:
            raise ConfigError(f"rho must be in (0, 1], got {rho!r}")
        if not 0 <= float(momentum) <= 1:
            raise ConfigError(f"momentum must be in [0, 1], got {momentum!r}")
        self.steps, self.restarts = steps, restarts
        self.rho, self.momentum = float(rho), float(momentum)

    def _restarts(
        self, oracle: Oracle, x: torch.Tensor, threat: ThreatModel, generator: torch.Generator | None,
        make: Callable[[torch.Tensor], tuple[Loss, Success]], best_x: torch.Tensor, best_loss: torch.Tensor,
        won: torch.Tensor,
    ) -> None:
        """Run restarts on the rows not yet ``won``; update ``best_x/best_loss/won (B,)`` in place.

        ``make(idx)`` returns the loss and success functions for the rows ``idx`` of ``x``."""
        for _ in range(self.restarts):
            idx = (~won).nonzero().squeeze(1)
            if idx.numel() == 0:
                return
            loss, success = make(idx)
            xo, ok, lb = apgd_run(oracle, x[idx], loss, success, threat, self.steps, self.rho, self.momentum, generator)
            take = ok | (lb > best_loss[idx])
            best_x[idx[take]] = xo[take]
            best_loss[idx[take]] = lb[take]
            won[idx[ok]] = True


@ATTACKS.register("apgd", help="Auto-PGD with CE or DLR loss (Croce & Hein 2020/2021), linf / l2 / l1")
class APGD(_APGDBase):
    """APGD-CE / APGD-DLR.

    Args:
        steps: iterations per restart (default 100). restarts: random restarts (default 1).
        loss: ``"ce"`` or ``"dlr"``. rho: checkpoint threshold (0.75). momentum: 0.75.

    Targeted (explicit targets ``t``): CE uses ``-CE(z, t)``; DLR uses the targeted DLR loss with
    ``y`` replaced by the strongest non-target class, so that success means ``argmax = t``.
    """

    def __init__(self, steps: int = 100, restarts: int = 1, loss: str = "ce", rho: float = 0.75,
                 momentum: float = 0.75) -> None:
        super().__init__(steps, restarts, rho, momentum)
        if loss not in ("ce", "dlr"):
            raise ConfigError(f"unknown APGD loss {loss!r}; allowed: ce, dlr")
        self.loss = loss

    def _run(self, oracle: Oracle, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             targeted: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
        """Search ``x (B, ...)``, labels ``y (B,)``; returns the best point per sample."""
        best_x = x.clone()
        best_loss = torch.full((x.shape[0],), float("-inf"), dtype=x.dtype, device=x.device)
        won = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

        def make(idx: torch.Tensor) -> tuple[Loss, Success]:
            yy = y[idx]
            tt = targeted[idx] if targeted is not None else None

            def loss(z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
                if tt is None:
                    return ce_loss(z, yy[r]) if self.loss == "ce" else dlr_loss(z, yy[r])
                if self.loss == "ce":
                    return -ce_loss(z, tt[r])
                return dlr_targeted_loss(z, strongest_other(z.detach(), tt[r]), tt[r])

            def success(z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
                return z.argmax(1) != yy[r] if tt is None else z.argmax(1) == tt[r]

            return loss, success

        self._restarts(oracle, x, threat, generator, make, best_x, best_loss, won)
        return best_x


@ATTACKS.register("apgd-t", help="targeted Auto-PGD with the targeted DLR loss over the top-k classes")
class APGDT(_APGDBase):
    """APGD-T: for each of the ``n_target_classes`` highest-scoring wrong classes (at the clean
    input) in turn, APGD with the targeted DLR loss ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2)``
    on the points still robust; success is any misclassification. With explicit ``targeted``
    labels it runs once per restart towards them and success means ``argmax = t``.
    """

    def __init__(self, steps: int = 100, restarts: int = 1, n_target_classes: int = 9, rho: float = 0.75,
                 momentum: float = 0.75) -> None:
        super().__init__(steps, restarts, rho, momentum)
        if not isinstance(n_target_classes, int) or n_target_classes < 1:
            raise ConfigError(f"n_target_classes must be an integer >= 1, got {n_target_classes!r}")
        self.n_target_classes = n_target_classes

    def _run(self, oracle: Oracle, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             targeted: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
        """Search ``x (B, ...)``, labels ``y (B,)``; returns the best point per sample."""
        b = x.shape[0]
        best_x = x.clone()
        won = torch.zeros(b, dtype=torch.bool, device=x.device)
        if targeted is not None:
            tlist = [targeted]
        else:
            clean = oracle.logits(x)
            clean.scatter_(1, y[:, None], float("-inf"))
            k = min(self.n_target_classes, oracle.num_classes - 1)
            order = clean.argsort(dim=1, descending=True)
            tlist = [order[:, j] for j in range(k)]
        for j, tgt in enumerate(tlist):
            cand = best_x.clone()
            best_loss = torch.full((b,), float("-inf"), dtype=x.dtype, device=x.device)
            before = won.clone()

            def make(idx: torch.Tensor, tgt: torch.Tensor = tgt) -> tuple[Loss, Success]:
                yy, tt = y[idx], tgt[idx]

                def loss(z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
                    if targeted is None:
                        return dlr_targeted_loss(z, yy[r], tt[r])
                    return dlr_targeted_loss(z, strongest_other(z.detach(), tt[r]), tt[r])

                def success(z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
                    return z.argmax(1) != yy[r] if targeted is None else z.argmax(1) == tt[r]

                return loss, success

            self._restarts(oracle, x, threat, generator, make, cand, best_loss, won)
            # adversarial points found for this target; still-robust points keep the first
            # target's highest-loss point (losses of different targets are not comparable)
            take = (won & ~before) | (~won if j == 0 else torch.zeros_like(won))
            best_x[take] = cand[take]
        return best_x
