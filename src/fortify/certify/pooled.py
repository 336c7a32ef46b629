"""Backward step through ``Conv2d -> [ReLU] -> MaxPool2d`` at the pooled resolution.

A fused-step strategy of CROWN's backward pass (Zhang et al. 2018), selected by the driver
(:func:`fortify.certify.crown.backward_lower`) where :class:`PooledConvStep` matches. The MaxPool
relaxation puts each window's coefficient on one element ``j*`` of the window
(:meth:`fortify.certify.ops.MaxPoolOp.relax`); the dense path
scatters the pooled coefficients into a zero map of the convolution's output (``m * m`` times
larger for an ``m x m`` pool) and runs a transposed convolution over it, so ``(m*m - 1) / (m*m)`` of
its multiply-adds hit zeros. Here the two steps are one: for non-overlapping windows (kernel ==
stride ``m``, no padding / dilation) and a convolution with stride ``s``, kernel ``k``, padding
``p``, no dilation, the pooled coefficient ``P[c, q]`` of window ``q`` reaches the convolution's
input through the kernel ``W[c]`` placed at the offset ``(dy, dx)`` of ``j*`` inside the window, an
"effective" kernel of size ``ke = (m - 1) s + k`` applied with stride ``m s`` and padding ``p``.
Per sample and window ``q`` the effective kernels form ``K_q (C_out, C_in ke ke)`` (gathered from
the ``m * m`` shifted copies of ``W``), so the step is one batched matmul ``P_q K_q`` followed by a
``fold`` (col2im): ``m*m`` fewer multiply-adds than the dense path in the convolution and no
full-resolution zero map. The result is exactly the dense step's (same relaxation, a
rearranged sum).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fortify.certify.ops import ConvOp, Interval, MaxPoolOp, Op, ReLUOp, memo, pair

#: default fan-in limit ``C_in k k`` of the convolution (see :func:`pooled_conv_index`)
MAX_FAN_IN = 64


def pooled_conv_index(ops: list[Op], t: int, max_fan_in: int | None = None) -> int | None:
    """Index of the Conv2d whose output feeds the MaxPool ``ops[t]`` (directly or through one ReLU)
    when the fused step applies (non-overlapping pool windows without padding / dilation tiling the
    conv output exactly, conv without dilation / groups, ``C_in k k <= max_fan_in``), else ``None``.
    The fan-in limit: the fused step writes ``(ke / (m s))^2`` times more columns than the dense
    one and only wins where the dense transposed convolution is slow (few input channels, e.g. the
    first layer on grey images: measured 1.8x faster on madry-cnn's first conv, 2x slower on its
    second, 32-channel one)."""
    max_fan_in = MAX_FAN_IN if max_fan_in is None else max_fan_in
    pool = ops[t]
    if not isinstance(pool, MaxPoolOp):
        return None
    tc = t - 2 if t >= 2 and isinstance(ops[t - 1], ReLUOp) else t - 1
    if tc < 0 or (tc == t - 2 and not pool.absorbs(ops[t - 1])):  # a ReLU between must be absorbed
        return None
    conv = ops[tc]
    if not isinstance(conv, ConvOp):
        return None
    m = pair(pool.kernel)
    if m != pair(pool.stride or pool.kernel) or pair(pool.padding) != (0, 0) or pair(pool.dilation) != (1, 1):
        return None
    if conv.groups != 1 or tuple(conv.dilation) != (1, 1) or len(conv.in_shape) != 3:
        return None
    if conv.w[0].numel() > max_fan_in:  # wide kernels: the dense transposed convolution is faster
        return None
    _, ho, wo = conv.out_shape
    _, hp, wp = pool.out_shape
    if ho != hp * m[0] or wo != wp * m[1]:
        return None
    _, h, w = conv.in_shape
    ke = [(m[i] - 1) * conv.stride[i] + conv.w.shape[2 + i] for i in range(2)]
    folds = [(size + 2 * conv.padding[i] - ke[i]) // (m[i] * conv.stride[i]) + 1 for i, size in enumerate((h, w))]
    return tc if folds == [hp, wp] else None


def shifted_kernels(conv: ConvOp, m: tuple[int, int]) -> torch.Tensor:
    """``(m0 * m1, C_out, C_in * ke0 * ke1)``: the kernel ``W`` placed at every offset ``(dy, dx)``
    of a pool window (offset index ``dy * m1 + dx``) inside the effective ``ke0 x ke1`` kernel."""
    cout, cin, kh, kw = conv.w.shape
    s0, s1 = conv.stride
    ke = ((m[0] - 1) * s0 + kh, (m[1] - 1) * s1 + kw)
    out = conv.w.new_zeros(m[0] * m[1], cout, cin, ke[0], ke[1])
    for dy in range(m[0]):
        for dx in range(m[1]):
            out[dy * m[1] + dx, :, :, dy * s0:dy * s0 + kh, dx * s1:dx * s1 + kw] = conv.w
    return out.reshape(m[0] * m[1], cout, -1)


def pooled_conv_back(conv: ConvOp, pool: MaxPoolOp, coef: torch.Tensor, index: torch.Tensor,
                     const: torch.Tensor, cache: dict | None = None, key: tuple = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward step through the convolution for coefficients ``coef (B, S, C_out, L)`` that sit on
    the ``j*`` elements ``index (B, C_out, L)`` (flat positions in the conv output, ``L`` pooled
    windows): returns ``(a (B, S, C_in, H, W), const + coef . bias)``; equal to scattering ``coef``
    to ``index`` and applying :meth:`ConvOp.back` / :meth:`ConvOp.bias`. ``cache`` / ``key``: see
    :func:`fortify.certify.ops.memo` (``key`` names the pool's bounds; the kernels depend on them only)."""
    m = pair(pool.kernel)
    bsz, s, cout, nl = coef.shape
    cin, h, w = conv.in_shape
    _, ho, wo = conv.out_shape
    wp = wo // m[1]
    if conv.b is not None:
        const = const + coef.sum(-1).matmul(conv.b)

    def kernels() -> torch.Tensor:  # (B L, C_out, F): the effective kernel of every window
        q = torch.arange(nl, device=coef.device)
        dy = index // wo - (q // wp) * m[0]
        dx = index % wo - (q % wp) * m[1]
        off = (dy * m[1] + dx) * cout + torch.arange(cout, device=coef.device).reshape(1, -1, 1)  # (B, C_out, L)
        kern = shifted_kernels(conv, m).reshape(m[0] * m[1] * cout, -1)
        return kern[off.transpose(1, 2).reshape(-1)].reshape(bsz * nl, cout, -1)

    big = memo(cache, key + (bsz,), kernels)
    p = coef.permute(0, 3, 1, 2).reshape(bsz * nl, s, cout)  # (B L, S, C_out)
    cols = torch.bmm(p, big).reshape(bsz, nl, s, -1).permute(0, 2, 3, 1)  # (B, S, F, L)
    ke = ((m[0] - 1) * conv.stride[0] + conv.w.shape[2], (m[1] - 1) * conv.stride[1] + conv.w.shape[3])
    st = (m[0] * conv.stride[0], m[1] * conv.stride[1])
    out = F.fold(cols.reshape(bsz * s, -1, nl), (h, w), ke, padding=tuple(conv.padding), stride=st)
    return out.reshape(bsz, s, cin, h, w), const


class PooledConvStep:
    """The fused ``Conv2d -> [ReLU] -> MaxPool2d`` backward step as a strategy of the CROWN driver:
    :meth:`match` says whether it applies at the MaxPool ``ops[t]``, :meth:`backward` performs it."""

    def match(self, ops: list[Op], t: int) -> int | None:
        """Index of the lowest operator covered (the Conv2d), or ``None``."""
        return pooled_conv_index(ops, t)

    def backward(self, ops: list[Op], low: int, t: int, a: torch.Tensor, const: torch.Tensor,
                 bounds: list[Interval], cache: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a (B', S, *out of ops[t])``, const) -> ``(a (B, S, *in of ops[low]), const')``."""
        pool, conv = ops[t], ops[low]
        assert isinstance(pool, MaxPoolOp) and isinstance(conv, ConvOp), "match() admits Conv2d ... MaxPool2d only"
        below = bounds[t - 1] if low == t - 2 else None
        coef, index, const = pool.coefficients(a, const, *bounds[t], below=below, cache=cache)
        return pooled_conv_back(conv, pool, coef, index, const, cache, ("kern", id(pool), id(bounds[t][0])))
