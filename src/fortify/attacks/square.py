"""Square attack (Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a query-efficient
black-box adversarial attack via random search", ECCV).

Score-based random search on the margin loss: each iteration proposes, for every still-robust
sample, a new perturbation that differs from its current best only on a random square window
(a ``c x s x s`` block, one value per channel for ``linf``; a pair of pseudo-Gaussian bumps of
opposite sign for ``l2``), queries it once and keeps it when the margin decreases. The window
side follows the paper's schedule: ``p`` (the fraction of coordinates changed) is halved at
iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000, the iteration index being rescaled
to a 10,000-query budget. Initialisation: vertical stripes of ``+-eps`` (``linf``); a grid of
centred ``l2`` bumps with random signs rescaled to norm ``eps`` (``l2``).

Shapes: inputs ``(B, C, H, W)`` are used as images; ``(B, H, W)`` as one channel; ``(B, D)`` as a
``1 x D`` strip whose "squares" are segments of about ``p * D`` coordinates; higher ranks fold the
trailing dimensions into the width. Windows are drawn independently per sample and everything is
vectorised over the batch; a sample stops querying as soon as it is adversarial.
"""
from __future__ import annotations

import functools
import math

import torch

from fortify.attacks._blackbox import (
    QueryBudget,
    check_positive_float,
    check_positive_int,
    is_adversarial,
)
from fortify.attacks.base import Attack, Oracle
from fortify.attacks.losses import margin_loss
from fortify.attacks.registry import ATTACKS
from fortify.registry import renamed_kwargs
from fortify.errors import ConfigError
from fortify.threat import ThreatModel

_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_selection(p_init: float, it: int, queries: int) -> float:
    """The paper's piece-wise constant schedule of ``p`` at iteration ``it`` of ``queries``."""
    i = int(it / max(queries, 1) * 10000)
    halvings = sum(1 for t in _SCHEDULE if i > t)
    return p_init / (2**halvings)


def as_image(x: torch.Tensor) -> torch.Tensor:
    """View ``x (B, ...)`` as ``(B, C, H, W)`` (see the module docstring)."""
    b = x.shape[0]
    if x.dim() == 2:
        return x.reshape(b, 1, 1, x.shape[1])
    if x.dim() == 3:
        return x.unsqueeze(1)
    if x.dim() == 4:
        return x
    return x.reshape(b, x.shape[1], x.shape[2], -1)


def _window_sides(p: float, c: int, h: int, w: int, minimum: int, odd: bool) -> tuple[int, int]:
    """Window ``(sh, sw)`` covering about a fraction ``p`` of the ``h x w`` plane."""
    if h == 1 or w == 1:
        length = max(h, w)
        s = max(int(round(p * length)), minimum)
        s = max(1, min(s, length - 1 if length > 1 else 1))
        return (1, s) if h == 1 else (s, 1)
    s = max(int(round(math.sqrt(p * h * w))), minimum)
    if odd and s % 2 == 0:
        s += 1
    s = max(1, min(s, min(h, w) - 1))
    return s, s


def _random_windows(
    b: int, h: int, w: int, sh: int, sw: int, gen: torch.Generator | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random window: mask ``(B, 1, H, W)`` bool and its corners ``h0, w0 (B,)``."""
    h0 = torch.randint(0, h - sh + 1, (b,), generator=gen, device=device)
    w0 = torch.randint(0, w - sw + 1, (b,), generator=gen, device=device)
    rows = torch.arange(h, device=device)[None]
    cols = torch.arange(w, device=device)[None]
    mh = (rows >= h0[:, None]) & (rows < h0[:, None] + sh)
    mw = (cols >= w0[:, None]) & (cols < w0[:, None] + sw)
    return (mh[:, :, None] & mw[:, None, :])[:, None], h0, w0


@functools.lru_cache(maxsize=256)
def _pseudo_gaussian(a: int, b: int) -> torch.Tensor:
    """The paper's ``a x b`` bump: nested centred rectangles weighted ``1/(k+1)^2``, unit l2 norm
    (cached: callers must not modify the result in place)."""
    out = torch.zeros(a, b, dtype=torch.float64)
    ca, cb = a // 2, b // 2
    for k in range(max(ca, cb) + 1):
        out[max(ca - k, 0) : min(ca - k + 2 * k + 1, a), max(cb - k, 0) : min(cb - k + 2 * k + 1, b)] += 1.0 / (k + 1) ** 2
    return out / out.norm()


@functools.lru_cache(maxsize=256)
def _meta_pattern(a: int, b: int, split_rows: bool) -> torch.Tensor:
    """Two bumps of opposite sign (split along rows or columns), unit l2 norm; ``(a, b)``."""
    out = torch.zeros(a, b, dtype=torch.float64)
    if split_rows and a >= 2:
        out[: a // 2] = _pseudo_gaussian(a // 2, b)
        out[a // 2 :] = -_pseudo_gaussian(a - a // 2, b)
    elif not split_rows and b >= 2:
        out[:, : b // 2] = _pseudo_gaussian(a, b // 2)
        out[:, b // 2 :] = -_pseudo_gaussian(a, b - b // 2)
    else:
        out = _pseudo_gaussian(a, b)
    return out / out.norm()


def _random_sign(shape: tuple[int, ...], gen: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=gen, device=like.device).to(like.dtype) * 2 - 1


def _norm_chw(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return t.pow(2).sum(dim=dims, keepdim=True).sqrt()


@ATTACKS.register("square", help="Square attack: score-based random search with square updates (linf, l2)")
class Square(Attack):
    """Square attack (Andriushchenko et al. 2020), score-based, ``linf`` and ``l2``.

    Args:
        queries: query budget per sample and restart inside the search (the initial point
            counts as one); a sample stops querying as soon as it is adversarial.
        p_init: initial fraction of coordinates changed per iteration. The paper's defaults are
            0.05 (linf) / 0.1 (l2) for standard models; 0.8 (the default here, as in AutoAttack)
            is better against adversarially trained ones.
        restarts: independent runs on the samples that are still robust.
    """

    norms = ("linf", "l2")
    access = "score"
    supports_targeted = True
    minimum_norm = False

    @renamed_kwargs(n_queries="queries")
    def __init__(self, queries: int = 5000, p_init: float = 0.8, restarts: int = 1) -> None:
        self.queries = check_positive_int("queries", queries)
        self.p_init = check_positive_float("p_init", p_init)
        if self.p_init > 1:
            raise ConfigError(f"p_init must be in (0, 1], got {p_init!r}")
        self.restarts = check_positive_int("restarts", restarts)

    def _run(
        self,
        oracle: Oracle,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        targeted: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Search ``x_adv (B, ...)`` for ``x (B, ...)``; returns the best point per sample."""
        best = x.clone()
        todo = torch.arange(x.shape[0], device=x.device)
        for _ in range(self.restarts):
            if todo.numel() == 0 or threat.eps == 0:
                break
            t = targeted[todo] if targeted is not None else None
            adv, done = self._search(oracle, x[todo], y[todo], threat, t, generator)
            best[todo] = adv
            todo = todo[~done]
        return best

    def _margin(self, logits: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        """Loss to minimise ``(R,)``: ``z_y - max_{j!=y} z_j`` or ``max_{j!=t} z_j - z_t``."""
        return margin_loss(logits, t) if t is not None else -margin_loss(logits, y)

    def _search(
        self,
        oracle: Oracle,
        x0: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        t: torch.Tensor | None,
        gen: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One run; returns ``(x_best (B, ...), done (B,))``."""
        x = as_image(x0)
        b, c, h, w = x.shape
        # per-feature threats: the proposals are made without the box, then projected exactly
        general = threat.per_feature
        lo, hi = (-math.inf, math.inf) if general else (float(threat.bounds[0]), float(threat.bounds[1]))

        def feasible(xn: torch.Tensor, xo: torch.Tensor) -> torch.Tensor:
            if not general:
                return xn
            shape = (-1,) + x0.shape[1:]
            return threat.project(xn.reshape(shape), xo.reshape(shape)).reshape(xn.shape)

        eps = threat.eps
        budget = QueryBudget(oracle, b, self.queries, x.device)
        all_idx = torch.arange(b, device=x.device)
        if threat.norm == "linf":
            x_best = (x + eps * _random_sign((b, c, 1, w), gen, x)).clamp(lo, hi)
        else:
            x_best = self._l2_init(x, eps, gen).clamp(lo, hi)
        x_best = feasible(x_best, x)
        logits = budget.logits(x_best.reshape(x0.shape), all_idx)
        m_best = self._margin(logits, y, t)
        done = is_adversarial(logits.argmax(1), y, t)
        # compact state of the active samples, re-gathered only when some of them finish; every
        # active sample spends one query per iteration, so none runs out inside the loop
        act = (~done).nonzero().squeeze(1)
        xa, xb, mb, ya = x[act], x_best[act], m_best[act], y[act]
        ta = None if t is None else t[act]
        for it in range(self.queries - 1):
            if act.numel() == 0:
                break
            p = p_selection(self.p_init, it, self.queries)
            if threat.norm == "linf":
                x_new = self._linf_proposal(xa, xb, p, eps, lo, hi, gen)
            else:
                x_new = self._l2_proposal(xa, xb, p, eps, lo, hi, gen)
            x_new = feasible(x_new, xa)
            logits = budget.logits(x_new.reshape((-1,) + x0.shape[1:]), act)
            m = self._margin(logits, ya, ta)
            better = m < mb
            mb = torch.where(better, m, mb)
            xb = torch.where(better[:, None, None, None], x_new, xb)
            fin = is_adversarial(logits.argmax(1), ya, ta) & better
            if bool(fin.any()):
                x_best[act], m_best[act] = xb, mb
                done[act[fin]] = True
                keep = ~fin
                act, xa, xb, mb, ya = act[keep], xa[keep], xb[keep], mb[keep], ya[keep]
                ta = None if ta is None else ta[keep]
        x_best[act], m_best[act] = xb, mb
        return x_best.reshape(x0.shape), done

    # ------------------------------------------------------------------ linf
    @staticmethod
    def _linf_proposal(
        x: torch.Tensor, xb: torch.Tensor, p: float, eps: float, lo: float, hi: float, gen: torch.Generator | None
    ) -> torch.Tensor:
        """Re-draw one ``+-eps`` value per channel on a random window per sample; ``(R, C, H, W)``."""
        r, c, h, w = x.shape
        sh, sw = _window_sides(p, c, h, w, minimum=1, odd=False)
        # the window as flat pixel indices (R, C, sh*sw): only its few values are computed, the rest
        # of the proposal is a copy of the current point
        h0 = torch.randint(0, h - sh + 1, (r,), generator=gen, device=x.device)
        w0 = torch.randint(0, w - sw + 1, (r,), generator=gen, device=x.device)
        rows = h0[:, None] + torch.arange(sh, device=x.device)[None]
        cols = w0[:, None] + torch.arange(sw, device=x.device)[None]
        pix = (rows[:, :, None] * w + cols[:, None, :]).reshape(r, 1, sh * sw).expand(r, c, sh * sw)
        xw = x.reshape(r, c, h * w).gather(2, pix)
        bw = xb.reshape(r, c, h * w).gather(2, pix)
        vals = eps * _random_sign((r, c, 1), gen, x)
        # the reference re-draws while the proposal would not change the current point; here one
        # re-draw, then the opposite corner (which always changes an unclipped window)
        for attempt in range(3):
            new = (xw + vals).clamp(lo, hi)
            same = ~((new - bw).abs() > 1e-7).reshape(r, -1).any(dim=1)
            if attempt == 2 or not bool(same.any()):
                break
            redraw = eps * _random_sign((r, c, 1), gen, x) if attempt == 0 else -vals
            vals = torch.where(same[:, None, None], redraw, vals)
        return xb.reshape(r, c, h * w).clone().scatter_(2, pix, new).reshape(r, c, h, w)

    # ------------------------------------------------------------------ l2
    @staticmethod
    def _l2_init(x: torch.Tensor, eps: float, gen: torch.Generator | None) -> torch.Tensor:
        """Grid of centred bumps (tile side ``H // 5``) with random signs per sample, channel and
        tile, rescaled to l2 norm ``eps``; ``(B, C, H, W)`` (not yet clipped to the box)."""
        b, c, h, w = x.shape
        th, tw = max(h // 5, 1), max(w // 5, 1)
        if h > 1 and w > 1:
            th = tw = max(min(h, w) // 5, 1)
        nh, nw = h // th, w // tw
        oh, ow = (h - nh * th) // 2, (w - nw * tw) // 2
        delta = torch.zeros_like(x)
        for i in range(nh):
            for j in range(nw):
                split_rows = bool(torch.randint(0, 2, (1,), generator=gen, device=x.device)) if th == tw else th > tw
                pat = _meta_pattern(th, tw, split_rows).to(x)
                sign = _random_sign((b, c, 1, 1), gen, x)
                delta[:, :, oh + i * th : oh + (i + 1) * th, ow + j * tw : ow + (j + 1) * tw] += pat * sign
        delta = delta / _norm_chw(delta, (1, 2, 3)).clamp_min(1e-12)
        return x + eps * delta

    @staticmethod
    def _l2_proposal(
        x: torch.Tensor, xb: torch.Tensor, p: float, eps: float, lo: float, hi: float, gen: torch.Generator | None
    ) -> torch.Tensor:
        """The paper's l2 update: move the mass of window 2 and the free budget into window 1 as a
        fresh pair of opposite bumps added to the old content, then rescale to norm ``eps``."""
        r, c, h, w = x.shape
        sh, sw = _window_sides(p, c, h, w, minimum=3, odd=True)
        m1, h0, w0 = _random_windows(r, h, w, sh, sw, gen, x.device)
        m2, _, _ = _random_windows(r, h, w, sh, sw, gen, x.device)
        m1f, m12 = m1.to(x.dtype), (m1 | m2).to(x.dtype)
        delta = xb - x
        norm_w1 = _norm_chw(delta * m1f, (2, 3))
        norm_img = _norm_chw(delta, (1, 2, 3))
        norm_w12 = _norm_chw(delta * m12, (2, 3))
        # pattern per sample: split rows or columns at random for squares
        if sh == sw:
            pats = torch.stack([_meta_pattern(sh, sw, True), _meta_pattern(sh, sw, False)]).to(x)
            choice = torch.randint(0, 2, (r,), generator=gen, device=x.device)
            pat = pats[choice]
        else:
            pat = _meta_pattern(sh, sw, sh > sw).to(x).expand(r, sh, sw)
        rh = (torch.arange(h, device=x.device)[None] - h0[:, None]).clamp(0, sh - 1)
        rw = (torch.arange(w, device=x.device)[None] - w0[:, None]).clamp(0, sw - 1)
        bi = torch.arange(r, device=x.device)[:, None, None]
        full = pat[bi, rh[:, :, None], rw[:, None, :]][:, None] * m1f
        new = full * _random_sign((r, c, 1, 1), gen, x) + delta * m1f / (1e-10 + norm_w1)
        new = new / _norm_chw(new * m1f, (2, 3)).clamp_min(1e-12)
        new = new * ((eps**2 - norm_img**2).clamp_min(0) / c + norm_w12**2).sqrt()
        delta = torch.where(m1, new, delta * (1 - m12))
        delta = delta / _norm_chw(delta, (1, 2, 3)).clamp_min(1e-12) * eps
        return (x + delta).clamp(lo, hi)
