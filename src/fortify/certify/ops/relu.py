"""ReLU: IBP ``[relu(l), relu(u)]`` and the CROWN relaxation (Zhang et al. 2018) with adaptive lower
slopes (CROWN-Ada) or free ones (alpha-CROWN, Xu et al. 2021).

For pre-activation bounds ``[l, u]``:

* upper: ``y <= u / (u - l) * (x - l)`` (the chord) for unstable neurons (``l < 0 < u``);
* lower: ``y >= alpha x`` with ``alpha = 1[u > -l]`` (CROWN-Ada) or any ``alpha`` in [0, 1];
* stable neurons are exact (``y = x`` or ``y = 0``);

in a backward step positive coefficients take the lower and negative ones the upper relaxation.
"""
from __future__ import annotations

import torch
from torch import nn

from fortify.certify.ops.base import Interval, Op, register_op
from fortify.certify.ops.cache import memo
from fortify.certify.ops.window import Grid, gather


def relu_relax(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slopes/intercept of the CROWN-Ada ReLU relaxation: ``(lower_slope, upper_slope, upper_bias)``,
    each shaped like ``lo``; ``lower_slope * x <= relu(x) <= upper_slope * x + upper_bias``."""
    active = lo >= 0
    unstable = (lo < 0) & (hi > 0)
    denom = torch.where(unstable, hi - lo, torch.ones_like(hi))
    su = torch.where(unstable, hi / denom, active.to(lo.dtype))
    bu = torch.where(unstable, -su * lo, torch.zeros_like(lo))
    sl = torch.where(unstable, (hi > -lo).to(lo.dtype), active.to(lo.dtype))
    return sl, su, bu


def _relu_parts(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(sl, su, bu (B, 1, N), cols)`` plus ``su - sl`` (many unstable columns) or the three slopes
    restricted to the unstable columns ``cols`` (union over the batch)."""
    b = lo.shape[0]
    sl, su, bu = (t.reshape(b, 1, -1) for t in relu_relax(lo, hi))
    cols = ((lo < 0) & (hi > 0)).reshape(b, -1).any(dim=0).nonzero().squeeze(1)
    parts = (sl, su, bu, cols)
    if 4 * cols.numel() > sl.shape[-1]:
        return parts + (su - sl,)
    return parts + (sl[..., cols], su[..., cols], bu[..., cols])


class ReLUOp(Op):
    """``nn.ReLU``, elementwise on any shape."""

    linear = False
    supports_windows = True

    def __init__(self, name: str) -> None:
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> Interval:
        return torch.relu(lo), torch.relu(hi)

    def backward(self, a: torch.Tensor, const: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, *,
                 cache: dict | None = None, alpha: torch.Tensor | None = None,
                 below: Interval | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``a -> a * (sl if a > 0 else su)``, ``const += sum(min(a, 0) * bu)``. With few unstable
        columns (union over the batch, <= 1/4) the sign-dependent part is applied to those columns
        only (stable ones: a single product ``a * slope``); otherwise the whole-tensor form
        ``a * sl - min(a, 0) * (sl - su)`` avoids the column gather / scatter. ``alpha (B', S, N)``
        in [0, 1]: lower slopes of the unstable neurons per specification row (alpha-CROWN; stable
        neurons keep their exact slope)."""
        parts = memo(cache, ("relu", id(lo), id(hi)), lambda: _relu_parts(lo, hi))
        sl, su, bu, cols = parts[:4]
        flat = a.reshape(a.shape[0], a.shape[1], -1)
        if alpha is not None or len(parts) == 5:  # whole-tensor form (many unstable columns, or free slopes)
            if alpha is not None:
                unstable = memo(cache, ("unstable", id(lo), id(hi)),
                                lambda: ((lo < 0) & (hi > 0)).reshape(lo.shape[0], 1, -1))
                sl = torch.where(unstable, alpha, sl)
                gap = su - sl
            else:
                gap = parts[4]  # su - sl
            neg = flat.clamp(max=0)
            const = const + neg.matmul(bu.transpose(1, 2)).squeeze(-1)
            new = torch.addcmul(flat * sl, neg, gap)  # a > 0: lower slope; a < 0: upper slope
            return new.reshape(new.shape[:2] + a.shape[2:]), const
        new = flat * su
        if cols.numel():
            slc, suc, buc = parts[4:]
            au = flat[..., cols]
            new[..., cols] = torch.where(au > 0, au * slc, au * suc)
            const = const + (au.clamp(max=0) * buc).sum(-1)
        return new.reshape(new.shape[:2] + a.shape[2:]), const

    def window_back(self, a: torch.Tensor, grid: Grid, const: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, *,
                    cache: dict | None = None, below: Interval | None = None
                    ) -> tuple[torch.Tensor, Grid, torch.Tensor]:
        """The relaxation maps cut at the windows (same relaxation as :meth:`backward`)."""
        h, w = a.shape[-2:]
        sl, su, bu = gather(lambda: torch.stack(relu_relax(lo, hi)), grid, h, w, cache=cache,
                            key=("relu", id(lo), id(hi)))
        pos = a > 0
        const = const + (a * bu).masked_fill_(pos, 0).flatten(2).sum(-1)
        return a * torch.where(pos, sl, su), grid, const

    def refine_rows(self, lo: torch.Tensor, hi: torch.Tensor, after: Op | None) -> torch.Tensor:
        """The unstable neurons, plus the active ones whose output the next operator's relaxation
        depends on (``after.relevant_inputs``, e.g. elements of undecided MaxPool windows)."""
        b = lo.shape[0]
        lf, hf = lo.reshape(b, -1), hi.reshape(b, -1)
        need = (lf < 0) & (hf > 0)
        rel = after.relevant_inputs(torch.relu(lo), torch.relu(hi)) if after is not None else None
        if rel is not None:
            need = need | ((lf >= 0) & rel.reshape(b, -1))
        return need


@register_op(nn.ReLU)
def _relu(m: nn.Module, name: str, in_shape: tuple[int, ...], ref: torch.Tensor) -> list[Op]:
    return [ReLUOp(name)]
