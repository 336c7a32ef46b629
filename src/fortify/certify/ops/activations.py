"""Elementwise activations with linear relaxations: LeakyReLU, Sigmoid, Tanh.

Each activation ``f`` is monotone increasing, so IBP is ``[f(l), f(u)]``. Its CROWN relaxation
(Zhang et al. 2018, "Efficient neural network robustness certification with general activation
functions", Sec. 3.2) is a pair of lines per neuron, ``sl x + bl <= f(x) <= su x + bu`` on
``[l, u]``; a backward step maps ``a -> a+ sl + a- su`` and adds ``a+ . bl + a- . bu``
(:class:`ElementwiseOp`). The lines:

* LeakyReLU with slope ``s`` in [0, 1] (convex): upper = the chord; lower = ``alpha x`` with the
  adaptive ``alpha = 1[u > -l]`` or ``s`` (CROWN-Ada; every ``alpha`` in ``[s, 1]`` is sound); exact
  when the neuron is stable.
* Sigmoid / Tanh (convex for ``x < 0``, concave for ``x > 0``): on a convex interval the chord is
  above and the tangent at the midpoint below; on a concave one the reverse. On a mixed interval
  ``l < 0 < u`` the upper line is the chord when its slope is at most ``f'(u)``, else the tangent
  at ``d`` in ``[0, u]`` through ``(l, f(l))`` (``d`` found by bisection; the end of the bracket
  whose tangent passes above ``(l, f(l))`` is kept, so the line stays sound); the lower line
  symmetrically (chord when its slope is at most ``f'(l)``, else a tangent at ``d`` in ``[l, 0]``
  passing below ``(u, f(u))``). Proof sketch: ``g - f`` vanishes or is >= 0 at both ends of each
  region and is concave / convex there with the right sign of derivative.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fortify.certify.ops.base import Interval, Op, register_op
from fortify.certify.ops.cache import memo
from fortify.certify.ops.window import Grid, gather
from fortify.errors import UnsupportedLayerError

Relaxation = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

#: bisection steps of the tangent-point search (interval length shrinks 2^-30)
_BISECT = 30


class ElementwiseOp(Op):
    """An elementwise monotone activation with a relaxation ``(sl, bl, su, bu)`` shaped like its input."""

    linear = False
    supports_windows = True

    def __init__(self, name: str) -> None:
        self.name = name

    def f(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x)

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> Interval:
        return self.f(lo), self.f(hi)

    def relax(self, lo: torch.Tensor, hi: torch.Tensor) -> Relaxation:
        """``(sl, bl, su, bu)``: ``sl x + bl <= f(x) <= su x + bu`` for ``x`` in ``[lo, hi]``."""
        raise NotImplementedError

    def backward(self, a: torch.Tensor, const: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, *,
                 cache: dict | None = None, alpha: torch.Tensor | None = None,
                 below: Interval | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``a (B', S, *in) -> a+ sl + a- su``, ``const += a+ . bl + a- . bu``."""
        b = lo.shape[0]
        sl, bl, su, bu = memo(cache, ("act", id(self), id(lo), id(hi)),
                              lambda: [t.reshape(b, 1, -1) for t in self.relax(lo, hi)])
        flat = a.reshape(a.shape[0], a.shape[1], -1)
        pos, neg = flat.clamp(min=0), flat.clamp(max=0)
        const = const + (pos * bl).sum(-1) + (neg * bu).sum(-1)
        new = pos * sl + neg * su
        return new.reshape(new.shape[:2] + a.shape[2:]), const

    def window_back(self, a: torch.Tensor, grid: Grid, const: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, *,
                    cache: dict | None = None, below: Interval | None = None
                    ) -> tuple[torch.Tensor, Grid, torch.Tensor]:
        """The relaxation maps cut at the windows (same relaxation as :meth:`backward`)."""
        h, w = a.shape[-2:]
        sl, bl, su, bu = gather(lambda: torch.stack(self.relax(lo, hi)), grid, h, w, cache=cache,
                                key=("act", id(self), id(lo), id(hi)))
        pos, neg = a.clamp(min=0), a.clamp(max=0)
        const = const + (pos * bl + neg * bu).flatten(2).sum(-1)
        return pos * sl + neg * su, grid, const


class LeakyReLUOp(ElementwiseOp):
    """``nn.LeakyReLU(s)``, ``0 <= s <= 1``: ``max(x, s x)``."""

    def __init__(self, slope: float, name: str) -> None:
        super().__init__(name)
        self.slope = float(slope)

    def f(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.leaky_relu(x, self.slope)

    def relax(self, lo: torch.Tensor, hi: torch.Tensor) -> Relaxation:
        s = self.slope
        active, unstable = lo >= 0, (lo < 0) & (hi > 0)
        stable_slope = torch.where(active, torch.ones_like(lo), torch.full_like(lo, s))
        denom = torch.where(unstable, hi - lo, torch.ones_like(hi))
        su = torch.where(unstable, (hi - s * lo) / denom, stable_slope)
        bu = torch.where(unstable, lo * s - su * lo, torch.zeros_like(lo))
        ada = torch.where(hi > -lo, torch.ones_like(lo), torch.full_like(lo, s))
        sl = torch.where(unstable, ada, stable_slope)
        return sl, torch.zeros_like(lo), su, bu


class _SShapedOp(ElementwiseOp):
    """Sigmoid-shaped activations: increasing, convex on ``x < 0``, concave on ``x > 0``."""

    def df(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _tangent(self, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.df(d)
        return k, self.f(d) - k * d

    def _search(self, lo_d: torch.Tensor, hi_d: torch.Tensor, through: torch.Tensor,
                keep: Callable[[torch.Tensor], torch.Tensor], upper: bool) -> torch.Tensor:
        """Bisection for the tangent point ``d`` whose tangent passes through ``(through, f(through))``;
        returns the bracket end on the sound side (``keep(d)``: the tangent at ``d`` is on the right
        side of that point)."""
        ft = self.f(through)
        a, b = lo_d.clone(), hi_d.clone()
        for _ in range(_BISECT):
            m = (a + b) / 2
            k, c = self._tangent(m)
            ok = keep(k * through + c - ft)
            # upper (d in [0, u]): ok at d means d is at or beyond the root -> move the upper end down
            if upper:
                b, a = torch.where(ok, m, b), torch.where(ok, a, m)
            else:
                a, b = torch.where(ok, m, a), torch.where(ok, b, m)
        return b if upper else a

    def relax(self, lo: torch.Tensor, hi: torch.Tensor) -> Relaxation:
        lo, hi = lo.detach(), hi.detach()
        flo, fhi = self.f(lo), self.f(hi)
        width = hi - lo
        tiny = width <= 1e-6
        safe = torch.where(tiny, torch.ones_like(width), width)
        k_chord = torch.where(tiny, self.df(lo), (fhi - flo) / safe)
        b_chord = flo - k_chord * lo
        k_mid, b_mid = self._tangent((lo + hi) / 2)
        convex, concave = hi <= 0, lo >= 0
        # mixed intervals: upper = chord if its slope <= f'(u), else tangent at d in [0, u] through (l, f(l))
        zero = torch.zeros_like(lo)
        d_up = self._search(zero, hi.clamp(min=0), lo, lambda gap: gap >= 0, upper=True)
        k_up, b_up = self._tangent(d_up)
        chord_up = k_chord <= self.df(hi)
        su = torch.where(convex, k_chord, torch.where(concave, k_mid, torch.where(chord_up, k_chord, k_up)))
        bu = torch.where(convex, b_chord, torch.where(concave, b_mid, torch.where(chord_up, b_chord, b_up)))
        d_lo = self._search(lo.clamp(max=0), zero, hi, lambda gap: gap <= 0, upper=False)
        k_lo, b_lo = self._tangent(d_lo)
        chord_lo = k_chord <= self.df(lo)
        sl = torch.where(concave, k_chord, torch.where(convex, k_mid, torch.where(chord_lo, k_chord, k_lo)))
        bl = torch.where(concave, b_chord, torch.where(convex, b_mid, torch.where(chord_lo, b_chord, b_lo)))
        # float32 rounding: widen both lines by a few ulps of f's range
        slack = 4 * torch.finfo(lo.dtype).eps * (1 + fhi.abs())
        return sl, bl - slack, su, bu + slack


class SigmoidOp(_SShapedOp):
    """``nn.Sigmoid``: ``1 / (1 + exp(-x))``."""

    def f(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)

    def df(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(x)
        return s * (1 - s)


class TanhOp(_SShapedOp):
    """``nn.Tanh``."""

    def f(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)

    def df(self, x: torch.Tensor) -> torch.Tensor:
        return 1 - torch.tanh(x) ** 2


def leaky_relu_op(slope: float, name: str) -> LeakyReLUOp:
    """A LeakyReLU operator; slopes outside [0, 1] (concave) are refused."""
    if not 0.0 <= float(slope) <= 1.0:
        raise UnsupportedLayerError(f"layer {name!r} (LeakyReLU with negative_slope={slope}) is not supported; "
                                    "slopes in [0, 1] are")
    return LeakyReLUOp(slope, name)


@register_op(nn.LeakyReLU)
def _leaky(m: nn.Module, name: str, in_shape: tuple[int, ...], ref: torch.Tensor) -> list[Op]:
    assert isinstance(m, nn.LeakyReLU)
    return [leaky_relu_op(m.negative_slope, name)]


@register_op(nn.Sigmoid)
def _sigmoid(m: nn.Module, name: str, in_shape: tuple[int, ...], ref: torch.Tensor) -> list[Op]:
    return [SigmoidOp(name)]


@register_op(nn.Tanh)
def _tanh(m: nn.Module, name: str, in_shape: tuple[int, ...], ref: torch.Tensor) -> list[Op]:
    return [TanhOp(name)]
