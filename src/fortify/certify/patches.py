"""Windowed ("patches") backward bound propagation for the intermediate bounds of conv layers.

The unit functional of a conv neuron ``(c, i, j)`` only touches its receptive field, so instead of
dense coefficient maps ``(B, S, C, H, W)`` each specification row carries a window
``a (B', S, C, h, w)`` with its top-left corner ``(y0, x0)`` (per row) in the current feature map
(the idea of auto_LiRPA's Patches mode, Xu et al. 2020; written independently here). Windows may
stick out of the map; coefficients there are kept at zero (they would multiply zero padding).
Supported chain below the refined layer: Conv2d, BatchNorm/Normalized (per-channel affine), ReLU,
MaxPool2d on 4-D maps; :func:`windowed_ok` says when it applies, else CROWN uses dense maps.
Relaxations are exactly those of :mod:`fortify.certify.crown`, so bounds are identical.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fortify.certify.bounds import InputSet
from fortify.certify.graph import ConvOp, MaxPoolOp, Op, ReLUOp, ScaleShiftOp


def windowed_ok(ops: list[Op], t: int) -> bool:
    """Whether the rows of ``ops[t-1]`` (a Conv2d) can be propagated as windows down to the input."""
    if t < 1 or not isinstance(ops[t - 1], ConvOp) or ops[t - 1].groups != 1 or len(ops[0].in_shape) != 3:
        return False
    return all(isinstance(op, (ConvOp, ReLUOp, MaxPoolOp, ScaleShiftOp)) for op in ops[:t - 1])


def _gather(maps: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, h: int, w: int, fill: float = 0.0) -> torch.Tensor:
    """Windows of ``maps (B, C, H, W)`` (or ``(K, B, C, H, W)``, several maps at once) at corners
    ``(y0, x0) (S,)``, size ``h x w``: ``(B, S, C, h, w)`` (``(K, B, S, C, h, w)``); outside the
    map the value is ``fill``."""
    big = int(max(0, -int(y0.min()), -int(x0.min()), int((y0 + h).max()) - maps.shape[-2],
                  int((x0 + w).max()) - maps.shape[-1]))
    mp = F.pad(maps, (big, big, big, big), value=fill) if big else maps
    ys = (y0 + big)[:, None] + torch.arange(h, device=maps.device)
    xs = (x0 + big)[:, None] + torch.arange(w, device=maps.device)
    lead = mp.shape[:-2]
    flat = mp.reshape((-1,) + mp.shape[-2:])
    out = flat[:, ys[:, :, None], xs[:, None, :]]  # (B*C, S, h, w)
    out = out.reshape(lead + out.shape[1:])
    return out.movedim(-3, 1) if len(lead) == 2 else out.movedim(-3, 2)


def _inside(y0: torch.Tensor, x0: torch.Tensor, h: int, w: int, hh: int, ww: int) -> torch.Tensor:
    """``(1, S, 1, h, w)`` mask of window positions inside an ``hh x ww`` map."""
    ys = y0[:, None] + torch.arange(h, device=y0.device)
    xs = x0[:, None] + torch.arange(w, device=x0.device)
    m = ((ys >= 0) & (ys < hh))[:, :, None] & ((xs >= 0) & (xs < ww))[:, None, :]
    return m[None, :, None]


def conv_rows_window(op: ConvOp, rows: torch.Tensor):
    """Unit rows of a conv layer as windows at its input: ``(a (1, S, Cin, kh', kw'), y0, x0, bias (1, S))``."""
    cout, ho, wo = op.out_shape
    cin, hh, ww = op.in_shape
    (s0, s1), (p0, p1), (d0, d1) = op.stride, op.padding, op.dilation
    kh, kw = op.w.shape[2:]
    c, rem = rows // (ho * wo), rows % (ho * wo)
    i, j = rem // wo, rem % wo
    a = op.w.new_zeros(rows.numel(), cin, (kh - 1) * d0 + 1, (kw - 1) * d1 + 1)
    a[:, :, ::d0, ::d1] = op.w[c]
    y0, x0 = i * s0 - p0, j * s1 - p1
    a = a.unsqueeze(0) * _inside(y0, x0, a.shape[-2], a.shape[-1], hh, ww)
    bias = op.b[c] if op.b is not None else op.w.new_zeros(rows.numel())
    return a, y0, x0, bias.unsqueeze(0)


def _conv_back(op: ConvOp, a, y0, x0, const):
    bp, s = a.shape[:2]
    if op.b is not None:
        const = const + a.sum(dim=(-1, -2)).matmul(op.b)
    flat = a.reshape((bp * s,) + a.shape[2:])
    out = F.conv_transpose2d(flat, op.w, None, op.stride, 0, 0, op.groups, op.dilation)
    out = out.reshape((bp, s) + out.shape[1:])
    ny0, nx0 = y0 * op.stride[0] - op.padding[0], x0 * op.stride[1] - op.padding[1]
    _, hh, ww = op.in_shape
    return out * _inside(ny0, nx0, out.shape[-2], out.shape[-1], hh, ww), ny0, nx0, const


def _relu_back(a, y0, x0, const, lo, hi):
    from fortify.certify.crown import relu_relax

    h, w = a.shape[-2:]
    sl, su, bu = _gather(torch.stack(relu_relax(lo, hi)), y0, x0, h, w)
    new = torch.where(a > 0, a * sl, a * su)
    const = const + (a.clamp(max=0) * bu).flatten(2).sum(-1)
    return new, const


def _maxpool_back(op: MaxPoolOp, a, y0, x0, const, lo, hi):
    from fortify.certify.crown import maxpool_relax

    index, decided, upper = maxpool_relax(op, lo, hi)
    b = lo.shape[0]
    c, hin, win = op.in_shape
    _, hout, wout = op.out_shape
    h, w = a.shape[-2:]
    k = (op.kernel, op.kernel) if isinstance(op.kernel, int) else op.kernel
    st = (op.stride, op.stride) if isinstance(op.stride, int) else op.stride
    pd = (op.padding, op.padding) if isinstance(op.padding, int) else op.padding
    dl = (op.dilation, op.dilation) if isinstance(op.dilation, int) else op.dilation
    maps = torch.stack([index.to(a.dtype), (~decided).to(a.dtype), upper]).reshape(3, b, c, hout, wout)
    idx, und, up = _gather(maps, y0, x0, h, w)  # outside the map: index 0, decided, bound 0
    idx = idx.long()
    ny0, nx0 = y0 * st[0] - pd[0], x0 * st[1] - pd[1]
    nh, nw = (h - 1) * st[0] + (k[0] - 1) * dl[0] + 1, (w - 1) * st[1] + (k[1] - 1) * dl[1] + 1
    ly = (idx // win - ny0[None, :, None, None, None]).clamp(0, nh - 1)
    lx = (idx % win - nx0[None, :, None, None, None]).clamp(0, nw - 1)
    neg = a.clamp(max=0) * und
    const = const + (neg * up).flatten(2).sum(-1)
    coef = (a - neg).expand(b, -1, -1, -1, -1)
    s = coef.shape[1]
    out = a.new_zeros(b, s, c, nh * nw)
    out.scatter_add_(3, (ly * nw + lx).reshape(b, s, c, -1), coef.reshape(b, s, c, -1))
    return out.reshape(b, s, c, nh, nw), ny0, nx0, const


def _concretize(inp: InputSet, a, y0, x0, const) -> torch.Tensor:
    h, w = a.shape[-2:]
    mid, rad = _gather(torch.stack([(inp.hi + inp.lo) / 2, (inp.hi - inp.lo) / 2]), y0, x0, h, w)
    box = (a * mid).flatten(2).sum(-1) - (a.abs() * rad).flatten(2).sum(-1)
    if inp.norm == "linf":
        return box + const
    q = 2.0 if inp.norm == "l2" else float("inf")
    x0w = _gather(inp.x, y0, x0, h, w)
    dual = (a * x0w).flatten(2).sum(-1) - inp.eps * a.flatten(2).norm(p=q, dim=-1)
    return torch.maximum(box, dual) + const


def windowed_lower(ops: list[Op], t: int, rows: torch.Tensor, bounds, inp: InputSet) -> torch.Tensor:
    """Lower bounds ``(B, 2S)`` of ``+z_r`` (first S) and ``-z_r`` (last S) for the flat neurons
    ``rows (S,)`` of the output of ``ops[t-1]`` (a Conv2d), by windowed backward propagation."""
    a, y0, x0, c0 = conv_rows_window(ops[t - 1], rows)
    a, c0 = torch.cat([a, -a], dim=1), torch.cat([c0, -c0], dim=1)
    y0, x0 = torch.cat([y0, y0]), torch.cat([x0, x0])
    const = c0.expand(inp.x.shape[0], -1)
    for k in reversed(range(t - 1)):
        op = ops[k]
        if isinstance(op, ConvOp):
            a, y0, x0, const = _conv_back(op, a, y0, x0, const)
        elif isinstance(op, ScaleShiftOp):
            const = const + a.sum(dim=(-1, -2)).matmul(op.shift.expand(a.shape[2]))
            a = a * op.scale.reshape(-1, 1, 1)
        elif isinstance(op, ReLUOp):
            a, const = _relu_back(a, y0, x0, const, *bounds[k])
        else:
            a, y0, x0, const = _maxpool_back(op, a, y0, x0, const, *bounds[k])
    return _concretize(inp, a, y0, x0, const)
