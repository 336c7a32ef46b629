"""Pooling: MaxPool2d (monotone, its own CROWN relaxation) and AvgPool2d (a grouped convolution).

MaxPool2d relaxation (sound): with ``j*`` the window element of largest lower bound,
``y >= x_{j*}``; ``y <= x_{j*}`` when ``l_{j*} >= u_k`` for every other element ``k`` (the max is
decided), else the constant ``y <= max_k u_k``. IBP is exact per output (``[max l, max u]``).

A ReLU followed by a MaxPool with non-overlapping windows (kernel == stride, no dilation) is
absorbed into the MaxPool step (:meth:`MaxPoolOp.absorbs`): the MaxPool step puts each window's
coefficient on its ``j*`` only (zeros elsewhere), so the ReLU step is the same when applied to the
pooled coefficients with the ReLU relaxation taken at ``j*`` (exactly equal bounds, 1 / kernel-area
of the work).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fortify.certify.ops.affine import ConvOp
from fortify.certify.ops.base import Interval, Op, pair, register_op
from fortify.certify.ops.cache import memo
from fortify.certify.ops.relu import ReLUOp, relu_relax
from fortify.certify.ops.window import Grid, gather
from fortify.errors import UnsupportedLayerError


def relu_at_jstar(index: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> list[torch.Tensor]:
    """ReLU relaxation ``(sl, su, bu)`` of pre-activation bounds ``lo, hi (B, C, H, W)`` taken at the
    MaxPool's ``j*``: ``index (B, C, L)`` flat positions -> three ``(B, C, L)`` tensors."""
    b, c = lo.shape[:2]
    return [m.reshape(b, c, -1).gather(2, index) for m in relu_relax(lo, hi)]


class MaxPoolOp(Op):
    """``nn.MaxPool2d`` (no ceil_mode / return_indices): ``(B, C, H, W) -> (B, C, H', W')``."""

    linear = False
    supports_windows = True

    def __init__(self, m: nn.MaxPool2d, name: str) -> None:
        if m.ceil_mode or m.return_indices:
            raise UnsupportedLayerError(f"layer {name!r} (MaxPool2d with ceil_mode/return_indices) is not supported")
        self.name = name
        self.kernel, self.stride, self.padding, self.dilation = m.kernel_size, m.stride, m.padding, m.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, self.kernel, self.stride, self.padding, self.dilation)

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> Interval:
        return self.forward(lo), self.forward(hi)

    def windows(self, t: torch.Tensor, fill: float) -> torch.Tensor:
        """``(B, C, k*k, L)`` pooling windows of ``t (B, C, H, W)`` (padding filled with ``fill``)."""
        b, c = t.shape[:2]
        ph, pw = pair(self.padding)
        tp = F.pad(t, (pw, pw, ph, ph), value=fill)
        u = F.unfold(tp, self.kernel, dilation=self.dilation, padding=0, stride=self.stride or self.kernel)
        return u.reshape(b, c, -1, u.shape[-1])

    def relax(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(index (B, C, L), decided (B, C, L) bool, upper_const (B, C, L))``: index is the flat
        input position of ``j*`` per window."""
        b, c, h, w = lo.shape
        lw = self.windows(lo, float("-inf"))
        uw = self.windows(hi, float("-inf"))
        pos = torch.arange(h * w, device=lo.device, dtype=lo.dtype).reshape(1, 1, h, w).expand(1, c, h, w)
        pw = self.windows(pos, -1.0)[0]  # (C, kk, L)
        jstar = lw.argmax(dim=2, keepdim=True)  # (B, C, 1, L)
        lstar = lw.gather(2, jstar).squeeze(2)
        others = uw.scatter(2, jstar, float("-inf")).amax(dim=2)
        decided = lstar >= others
        index = pw.unsqueeze(0).expand(b, -1, -1, -1).gather(2, jstar).squeeze(2).long()
        return index, decided, uw.amax(dim=2)

    def absorbs(self, prev: Op) -> bool:
        """A ReLU before non-overlapping windows (kernel == stride, no dilation) is applied at ``j*``."""
        if not isinstance(prev, ReLUOp):
            return False
        return pair(self.kernel) == pair(self.stride or self.kernel) and pair(self.dilation) == (1, 1)

    def relevant_inputs(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` bool: the element lies in a pooling window whose max is not decided by
        ``[lo, hi]``. Tightening bounds keeps a decided window decided with the same ``j*``, so the
        relaxation only depends on the bounds of elements of undecided windows."""
        _, decided, _ = self.relax(lo, hi)
        b, c, h, w = lo.shape
        pos = torch.arange(h * w, device=lo.device, dtype=lo.dtype).reshape(1, 1, h, w).expand(1, c, h, w)
        pw = self.windows(pos, -1.0)[0].long()  # (C, kk, L), -1 = padding
        und = (~decided).unsqueeze(2).expand(b, c, pw.shape[1], pw.shape[2]).to(lo.dtype)
        out = lo.new_zeros(b, c, h * w + 1)  # last slot absorbs the padding positions
        idx = torch.where(pw < 0, h * w, pw).unsqueeze(0).expand(b, -1, -1, -1).reshape(b, c, -1)
        out.scatter_reduce_(2, idx, und.reshape(b, c, -1), reduce="amax")
        return out[:, :, :h * w].reshape(b, c, h, w) > 0

    def coefficients(self, a: torch.Tensor, const: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                     below: Interval | None = None, cache: dict | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The pooled part of :meth:`backward`: ``(coef (B, S, C, L), index (B, C, L), const)``,
        ``coef`` the coefficients that land on the ``j*`` positions ``index`` (flat, in the pool
        input); ``below``: bounds of an absorbed ReLU's input (its relaxation taken at ``j*``)."""
        index, decided, upper = memo(cache, ("pool", id(self), id(lo), id(hi)), lambda: self.relax(lo, hi))
        bsz, s = max(a.shape[0], lo.shape[0]), a.shape[1]
        c = self.in_shape[0]
        af = a.reshape(a.shape[0], s, -1)
        coef = af.expand(bsz, s, af.shape[-1])
        cols = (~decided).reshape(decided.shape[0], -1).any(dim=0).nonzero().squeeze(1)
        if cols.numel():
            coef = coef.clone()
            und = (~decided).reshape(decided.shape[0], 1, -1)[..., cols].to(a.dtype)
            au = coef[..., cols]
            neg = au.clamp(max=0) * und
            coef[..., cols] = au - neg
            const = const + (neg * upper.reshape(upper.shape[0], 1, -1)[..., cols]).sum(-1)
        if below is not None:
            sl, su, bu = memo(cache, ("jstar", id(self), id(below[0]), id(below[1])),
                              lambda: [m.reshape(m.shape[0], 1, -1) for m in relu_at_jstar(index, *below)])
            const = const + (coef.clamp(max=0) * bu).sum(-1)
            coef = torch.where(coef > 0, coef * sl, coef * su)
        index = index.expand(bsz, -1, -1) if index.shape[0] != bsz else index
        return coef.reshape(bsz, s, c, -1), index, const

    def backward(self, a: torch.Tensor, const: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, *,
                 cache: dict | None = None, alpha: torch.Tensor | None = None,
                 below: Interval | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Coefficients go to ``j*`` of each window; negative ones of undecided windows take the
        constant upper bound instead (applied on those columns only)."""
        coef, index, const = self.coefficients(a, const, lo, hi, below, cache)
        bsz, s = coef.shape[:2]
        c, h, w = self.in_shape
        out = a.new_zeros(bsz, s, c, h * w)
        out.scatter_add_(3, index.unsqueeze(1).expand(bsz, s, c, -1), coef)
        return out.reshape((bsz, s) + tuple(self.in_shape)), const

    def window_back(self, a: torch.Tensor, grid: Grid, const: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, *,
                    cache: dict | None = None, below: Interval | None = None
                    ) -> tuple[torch.Tensor, Grid, torch.Tensor]:
        """Windowed :meth:`backward`: the relaxation maps (offset of ``j*`` in its window, undecided,
        upper constant, and an absorbed ReLU's slopes at ``j*``) cut at the windows, then a
        window-local scatter."""
        index, decided, upper = memo(cache, ("pool", id(self), id(lo), id(hi)), lambda: self.relax(lo, hi))
        b = lo.shape[0]
        c, _, win = self.in_shape
        _, hout, wout = self.out_shape
        h, w = a.shape[-2:]
        k, st, pd, dl = pair(self.kernel), pair(self.stride), pair(self.padding), pair(self.dilation)
        nh, nw = (h - 1) * st[0] + (k[0] - 1) * dl[0] + 1, (w - 1) * st[1] + (k[1] - 1) * dl[1] + 1
        # offset of j* inside its pooling window, as a flat position of the window-local input map:
        # input row of j* = i * stride - padding + dy, and window-local row = p * stride + dy
        oi = torch.arange(hout, device=a.device).reshape(-1, 1) * st[0] - pd[0]
        oj = torch.arange(wout, device=a.device).reshape(1, -1) * st[1] - pd[1]

        def stacked() -> torch.Tensor:
            idx = index.reshape(b, c, hout, wout)
            off = (idx // win - oi) * nw + (idx % win - oj)
            maps = [off.to(a.dtype), (~decided).to(a.dtype).reshape(off.shape), upper.reshape(off.shape)]
            if below is not None:
                maps += [m.reshape(off.shape) for m in relu_at_jstar(idx.reshape(b, c, -1), *below)]
            return torch.stack(maps)

        key = ("wpool", id(self), id(lo), id(hi), id(below[0]) if below is not None else None)
        got = gather(stacked, grid, h, w, cache=cache, key=key)  # outside the map: offset 0, decided, 0 (a is 0 there)
        off, und, up = got[0], got[1], got[2]
        ng = grid.back(st, pd)
        base = (torch.arange(h, device=a.device).reshape(-1, 1) * (st[0] * nw)
                + torch.arange(w, device=a.device).reshape(1, -1) * st[1])
        flat = off.long() + base  # (B, S, C, h, w)
        neg = a.clamp(max=0) * und  # negative coefficients of undecided windows: constant upper bound
        const = const + (neg * up).flatten(2).sum(-1)
        coef = a - neg
        if below is not None:
            const = const + (coef.clamp(max=0) * got[5]).flatten(2).sum(-1)
            coef = torch.where(coef > 0, coef * got[3], coef * got[4])
        coef = coef.expand(b, -1, -1, -1, -1)
        s = coef.shape[1]
        out = a.new_zeros(b, s, c, nh * nw)
        out.scatter_add_(3, flat.reshape(b, s, c, -1), coef.reshape(b, s, c, -1))
        return out.reshape(b, s, c, nh, nw), ng, const


@register_op(nn.MaxPool2d)
def _maxpool(m: nn.Module, name: str, in_shape: tuple[int, ...], ref: torch.Tensor) -> list[Op]:
    assert isinstance(m, nn.MaxPool2d)
    return [MaxPoolOp(m, name)]


@register_op(nn.AvgPool2d)
def _avgpool(m: nn.Module, name: str, in_shape: tuple[int, ...], ref: torch.Tensor) -> list[Op]:
    """AvgPool2d as a grouped convolution with the constant kernel ``1 / (k0 k1)`` per channel."""
    assert isinstance(m, nn.AvgPool2d)
    k, s, p = pair(m.kernel_size), pair(m.stride if m.stride is not None else m.kernel_size), pair(m.padding)
    if m.ceil_mode or (any(p) and not m.count_include_pad) or m.divisor_override is not None:
        raise UnsupportedLayerError(
            f"layer {name!r} (AvgPool2d with ceil_mode, count_include_pad=False or divisor_override) is not supported"
        )
    channels = in_shape[0]
    w = torch.full((channels, 1) + k, 1.0 / (k[0] * k[1]), dtype=ref.dtype, device=ref.device)
    return [ConvOp(w, None, s, p, (1, 1), channels, name)]
