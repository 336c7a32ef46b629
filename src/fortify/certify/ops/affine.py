"""Affine operators ``f(x) = W x + b``: Linear, Conv2d (also AvgPool2d), per-channel scale-shift
(BatchNorm in eval mode, the ``Normalized`` wrapper).

IBP (Gowal et al. 2018) is exact for one affine map: ``W mid +- |W| rad``. The CROWN step (Zhang
et al. 2018) is exact too: ``a -> a W``, ``const += a . b`` (:meth:`Op.backward`'s default). The
operators reference the module's parameters (no copies), so bounds are differentiable for
certified training.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fortify.certify.ops.base import Interval, Op, register_op
from fortify.certify.ops.window import Grid, inside
from fortify.errors import UnsupportedLayerError


def _flat_spec(a: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return a.reshape((-1,) + tuple(shape))


class LinearOp(Op):
    """``nn.Linear``: ``(B, n_in) -> (B, n_out)``."""

    mixing = True

    def __init__(self, m: nn.Linear, name: str) -> None:
        self.w, self.b, self.name = m.weight, m.bias, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.w, self.b)

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> Interval:
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        c = F.linear(mid, self.w, self.b)
        r = F.linear(rad, self.w.abs())
        return c - r, c + r

    def back(self, a: torch.Tensor) -> torch.Tensor:
        return a.matmul(self.w)

    def bias(self, a: torch.Tensor) -> torch.Tensor:
        if self.b is None:
            return a.new_zeros(a.shape[:2])
        return a.matmul(self.b)

    def rows_back(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.b[rows] if self.b is not None else self.w.new_zeros(rows.numel())
        return self.w[rows].unsqueeze(0), b.unsqueeze(0)


class ConvOp(Op):
    """``nn.Conv2d`` (zero padding); also AvgPool2d (a grouped convolution with a constant kernel).
    ``(B, C_in, H, W) -> (B, C_out, H', W')``."""

    mixing = True
    supports_windows = True

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None, stride: Any, padding: Any, dilation: Any, groups: int,
                 name: str) -> None:
        self.w, self.b, self.name = w, b, name
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.w, self.b, self.stride, self.padding, self.dilation, self.groups)

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> Interval:
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        c = self.forward(mid)
        r = F.conv2d(rad, self.w.abs(), None, self.stride, self.padding, self.dilation, self.groups)
        return c - r, c + r

    def back(self, a: torch.Tensor) -> torch.Tensor:
        lead = a.shape[:2]
        flat = _flat_spec(a, self.out_shape)
        out = conv_transpose(flat, self.w, self.stride, self.padding, self.dilation, self.groups,
                             (self.in_shape[1], self.in_shape[2]))
        return out.reshape(lead + tuple(self.in_shape))

    def bias(self, a: torch.Tensor) -> torch.Tensor:
        if self.b is None:
            return a.new_zeros(a.shape[:2])
        return a.sum(dim=(-1, -2)).matmul(self.b)

    def rows_back(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit rows of a convolution: the kernel of channel ``c`` placed at the receptive field of
        output pixel ``(i, j)`` (a "patch"), written directly instead of a transposed convolution
        of one-hot maps (which costs ``S`` full transposed convolutions)."""
        if self.groups != 1:
            return super().rows_back(rows)
        cout, ho, wo = self.out_shape
        cin, h, w = self.in_shape
        (s0, s1), (p0, p1), (d0, d1) = self.stride, self.padding, self.dilation
        c, rem = rows // (ho * wo), rows % (ho * wo)
        i, j = rem // wo, rem % wo
        n = rows.numel()
        buf = self.w.new_zeros(n, cin, h + 2 * p0 + s0, w + 2 * p1 + s1)
        ar = torch.arange(n, device=rows.device)
        kh, kw = self.w.shape[2:]
        for di in range(kh):
            for dj in range(kw):
                buf[ar, :, i * s0 + di * d0, j * s1 + dj * d1] = self.w[c, :, di, dj]
        a = buf[:, :, p0:p0 + h, p1:p1 + w].unsqueeze(0)
        b = self.b[c] if self.b is not None else self.w.new_zeros(n)
        return a, b.unsqueeze(0)

    def window_rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, Grid, torch.Tensor]:
        """Unit rows as windows at the input: ``(a (B', S, Cin, kh', kw'), grid, bias (B', S))``;
        ``rows`` is ``(S,)`` (shared by the batch, B' = 1) or ``(B, S)`` (per sample)."""
        _, ho, wo = self.out_shape
        cin, hh, ww = self.in_shape
        d0, d1 = self.dilation
        kh, kw = self.w.shape[2:]
        c, rem = rows // (ho * wo), rows % (ho * wo)
        g = Grid(rem // wo, rem % wo, 1, 0, 1, 0, (ho, wo)).back(self.stride, self.padding)
        a = self.w.new_zeros(rows.shape + (cin, (kh - 1) * d0 + 1, (kw - 1) * d1 + 1))
        a[..., ::d0, ::d1] = self.w[c]
        a = a.reshape((-1,) + a.shape[-4:]) * inside(g, a.shape[-2], a.shape[-1], hh, ww)
        bias = self.b[c] if self.b is not None else self.w.new_zeros(rows.shape)
        return a, g, bias.reshape(-1, bias.shape[-1])

    def window_back(self, a: torch.Tensor, grid: Grid, const: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, *,
                    cache: dict | None = None, below: Interval | None = None
                    ) -> tuple[torch.Tensor, Grid, torch.Tensor]:
        """Transposed convolution of each window (no padding), then the grid moves one layer down."""
        bp, s = a.shape[:2]
        if self.b is not None:
            const = const + a.sum(dim=(-1, -2)).matmul(self.b)
        flat = a.reshape((bp * s,) + a.shape[2:])
        kh, kw = self.w.shape[2:]
        out_hw = ((a.shape[-2] - 1) * self.stride[0] + (kh - 1) * self.dilation[0] + 1,
                  (a.shape[-1] - 1) * self.stride[1] + (kw - 1) * self.dilation[1] + 1)
        out = conv_transpose(flat, self.w, self.stride, (0, 0), self.dilation, self.groups, out_hw)
        out = out.reshape((bp, s) + out.shape[1:])
        ng = grid.back(self.stride, self.padding)
        _, hh, ww = self.in_shape
        return out * inside(ng, out.shape[-2], out.shape[-1], hh, ww), ng, const


class ScaleShiftOp(Op):
    """Per-channel affine ``x * scale + shift`` (channel = dim 1): BatchNorm (eval) and Normalized."""

    supports_windows = True

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor, name: str) -> None:
        self.scale, self.shift, self.name = scale.reshape(-1), shift.reshape(-1), name

    def _v(self, t: torch.Tensor, ndim_after: int) -> torch.Tensor:
        return t.reshape((-1,) + (1,) * ndim_after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = x.dim() - 2
        return x * self._v(self.scale, k) + self._v(self.shift, k)

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> Interval:
        k = lo.dim() - 2
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        c = mid * self._v(self.scale, k) + self._v(self.shift, k)
        r = rad * self._v(self.scale.abs(), k)
        return c - r, c + r

    def back(self, a: torch.Tensor) -> torch.Tensor:
        return a * self._v(self.scale, len(self.in_shape) - 1)

    def bias(self, a: torch.Tensor) -> torch.Tensor:
        k = len(self.in_shape) - 1
        summed = a.reshape(a.shape[:3] + (-1,)).sum(-1) if k else a
        return summed.matmul(self.shift.expand(self.in_shape[0]))

    def window_back(self, a: torch.Tensor, grid: Grid, const: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, *,
                    cache: dict | None = None, below: Interval | None = None
                    ) -> tuple[torch.Tensor, Grid, torch.Tensor]:
        const = const + a.sum(dim=(-1, -2)).matmul(self.shift.expand(a.shape[2]))
        return a * self.scale.reshape(-1, 1, 1), grid, const


def conv_transpose(a: torch.Tensor, w: torch.Tensor, stride: Any, padding: Any, dilation: Any, groups: int,
                   out_hw: tuple[int, int]) -> torch.Tensor:
    """Transposed convolution of ``a (N, Cout, h, w)`` with ``w (Cout, Cin/groups, kh, kw)`` to spatial
    size ``out_hw``. For few input channels (``Cin * kh * kw <= 64``, e.g. the first layer on
    grey images) a matmul + ``fold`` is used: CPU kernels for 1-channel transposed convolutions
    are several times slower than this column form. Otherwise the transposed convolution runs on
    channels-last input (faster CPU kernel; the result is channels-last too, a memory layout only)."""
    cout, cin, kh, kw = w.shape
    if groups == 1 and cin * kh * kw <= 64:
        n = a.shape[0]
        cols = w.reshape(cout, -1).t().matmul(a.reshape(n, cout, -1))
        return F.fold(cols, out_hw, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    hout, wout = a.shape[-2:]
    oh = out_hw[0] - ((hout - 1) * stride[0] - 2 * padding[0] + dilation[0] * (kh - 1) + 1)
    ow = out_hw[1] - ((wout - 1) * stride[1] - 2 * padding[1] + dilation[1] * (kw - 1) + 1)
    if a.dim() == 4 and a.shape[0] > 1:  # the channels-last CPU kernel is 1.3-2x faster, conversion included
        a = a.contiguous(memory_format=torch.channels_last)
    return F.conv_transpose2d(a, w, None, stride, padding, (oh, ow), groups, dilation)


@register_op(nn.Linear)
def _linear(m: nn.Module, name: str, in_shape: tuple[int, ...], ref: torch.Tensor) -> list[Op]:
    assert isinstance(m, nn.Linear)
    return [LinearOp(m, name)]


@register_op(nn.Conv2d)
def _conv(m: nn.Module, name: str, in_shape: tuple[int, ...], ref: torch.Tensor) -> list[Op]:
    assert isinstance(m, nn.Conv2d)
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise UnsupportedLayerError(f"layer {name!r} (Conv2d with padding={m.padding!r}, "
                                    f"padding_mode={m.padding_mode!r}) is not supported")
    return [ConvOp(m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups, name)]


@register_op(nn.BatchNorm1d, nn.BatchNorm2d)
def _batchnorm(m: nn.Module, name: str, in_shape: tuple[int, ...], ref: torch.Tensor) -> list[Op]:
    """Eval semantics: the running statistics, ``scale = w / sqrt(var + eps)``, ``shift = b - mean scale``."""
    assert isinstance(m, nn.modules.batchnorm._BatchNorm)
    if m.running_mean is None or m.running_var is None:
        raise UnsupportedLayerError(f"layer {name!r} ({type(m).__name__} without running statistics) is not supported")
    inv = torch.rsqrt(m.running_var + m.eps)
    w = m.weight if m.weight is not None else torch.ones_like(inv)
    b = m.bias if m.bias is not None else torch.zeros_like(inv)
    scale = w * inv
    return [ScaleShiftOp(scale, b - m.running_mean * scale, name)]
