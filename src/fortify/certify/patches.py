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
from fortify.certify.graph import ConvOp, MaxPoolOp, Op, ReLUOp, ScaleShiftOp, conv_transpose


def windowed_ok(ops: list[Op], t: int) -> bool:
    """Whether the rows of ``ops[t-1]`` (a Conv2d) can be propagated as windows down to the input."""
    if t < 1:
        return False
    conv = ops[t - 1]
    if not isinstance(conv, ConvOp) or conv.groups != 1 or len(ops[0].in_shape) != 3:
        return False
    return all(isinstance(op, (ConvOp, ReLUOp, MaxPoolOp, ScaleShiftOp)) for op in ops[:t - 1])


class Grid:
    """Window corners on a regular grid: row ``r`` sits at ``(gi_r * sy + oy, gj_r * sx + ox)``."""

    def __init__(self, gi: torch.Tensor, gj: torch.Tensor, sy: int, oy: int, sx: int, ox: int,
                 ext: tuple[int, int] | None = None) -> None:
        self.gi, self.gj, self.sy, self.oy, self.sx, self.ox = gi, gj, sy, oy, sx, ox
        self.ext = ext  # (rows, cols) of the whole grid, when known: windows then depend on the layer only

    @property
    def y0(self) -> torch.Tensor:
        return self.gi * self.sy + self.oy

    @property
    def x0(self) -> torch.Tensor:
        return self.gj * self.sx + self.ox

    def back(self, stride: tuple[int, int], padding: tuple[int, int]) -> "Grid":
        """Corners one layer down (input side of a conv / pool with this stride and padding)."""
        return Grid(self.gi, self.gj, self.sy * stride[0], self.oy * stride[0] - padding[0],
                    self.sx * stride[1], self.ox * stride[1] - padding[1], self.ext)

    def cat(self) -> "Grid":
        return Grid(torch.cat([self.gi, self.gi], -1), torch.cat([self.gj, self.gj], -1), self.sy, self.oy, self.sx,
                    self.ox, self.ext)


def _gather(maps, g: Grid, h: int, w: int, fill: float = 0.0, cache: dict | None = None,
            key: tuple = ()) -> torch.Tensor:
    """Windows of ``maps (..., C, H, W)`` at the grid corners, size ``h x w``: ``(..., S, C, h, w)``
    with the row axis inserted before C; outside the map the value is ``fill``. Uses ``unfold``
    (im2col) on the grid, then selects the rows' grid cells. ``maps`` may be a function returning
    the tensor; with per-sample rows, a grid of known extent and a ``cache`` the unfolded cells are
    computed once per ``key`` (the relaxation maps do not depend on the rows of a chunk)."""
    if g.gi.dim() == 2:
        return _gather_per_sample(maps, g, h, w, fill, cache, key)
    maps = maps() if callable(maps) else maps
    hh, ww = maps.shape[-2:]
    n_i, n_j = int(g.gi.max()) + 1, int(g.gj.max()) + 1
    top, left = max(0, -g.oy), max(0, -g.ox)
    bottom = max(0, (n_i - 1) * g.sy + g.oy + h - hh)
    right = max(0, (n_j - 1) * g.sx + g.ox + w - ww)
    lead = maps.shape[:-3]
    c = maps.shape[-3]
    mp = maps.reshape((-1, c, hh, ww))
    if top or left or bottom or right:
        mp = F.pad(mp, (left, right, top, bottom), value=fill)
    if g.gi.numel() < n_i * n_j:  # fewer rows than grid cells: index the rows' windows directly
        ys = (g.y0 + top)[:, None] + torch.arange(h, device=maps.device)
        xs = (g.x0 + left)[:, None] + torch.arange(w, device=maps.device)
        out = mp[:, :, ys[:, :, None], xs[:, None, :]].transpose(1, 2)  # (L0, S, C, h, w)
        return out.reshape(lead + out.shape[1:])
    mp = mp[:, :, g.oy + top:g.oy + top + (n_i - 1) * g.sy + h, g.ox + left:g.ox + left + (n_j - 1) * g.sx + w]
    cols = F.unfold(mp, (h, w), stride=(g.sy, g.sx))  # (L0, C*h*w, n_i*n_j): every grid window once
    sel = cols[:, :, g.gi * n_j + g.gj]  # (L0, C*h*w, S)
    out = sel.reshape(-1, c, h, w, sel.shape[-1]).permute(0, 4, 1, 2, 3)
    return out.reshape(lead + out.shape[1:])


def _gather_per_sample(maps, g: Grid, h: int, w: int, fill: float, cache: dict | None = None,
                       key: tuple = ()) -> torch.Tensor:
    """:func:`_gather` for per-sample rows (``g.gi (B, S)``): ``maps (..., B, C, H, W)`` ->
    ``(..., B, S, C, h, w)``, sample ``b``'s windows taken from ``maps[..., b, :, :, :]``. Every grid
    window is cut once by ``unfold`` into ``(B, cells, K*C*h*w)`` rows, then each specification row
    copies its cell's contiguous row (a row gather, much cheaper than element-wise indexing)."""
    n_i, n_j = g.ext if g.ext is not None else (int(g.gi.max()) + 1, int(g.gj.max()) + 1)

    def cells():
        m = maps() if callable(maps) else maps
        hh, ww = m.shape[-2:]
        bsz, c = m.shape[-4], m.shape[-3]
        top, left = max(0, -g.oy), max(0, -g.ox)
        bottom = max(0, (n_i - 1) * g.sy + g.oy + h - hh)
        right = max(0, (n_j - 1) * g.sx + g.ox + w - ww)
        mp = m.reshape((-1, bsz, c, hh, ww)).transpose(0, 1).reshape(bsz, -1, hh, ww)  # (B, K*C, H, W)
        if top or left or bottom or right:
            mp = F.pad(mp, (left, right, top, bottom), value=fill)
        mp = mp[:, :, g.oy + top:g.oy + top + (n_i - 1) * g.sy + h, g.ox + left:g.ox + left + (n_j - 1) * g.sx + w]
        cols = F.unfold(mp, (h, w), stride=(g.sy, g.sx)).transpose(1, 2).contiguous()  # (B, cells, K*C*h*w)
        return cols, m.shape[:-4], c

    from fortify.certify.crown import memo

    cols, lead, c = memo(cache if g.ext is not None else None, key + (h, w, g.sy, g.oy, g.sx, g.ox), cells)
    bsz = cols.shape[0]
    cell = g.gi * n_j + g.gj  # (B, S)
    out = cols[torch.arange(bsz, device=cols.device)[:, None], cell]  # (B, S, K*C*h*w)
    out = out.reshape(bsz, cell.shape[1], -1, c, h, w).movedim(2, 0)  # (K, B, S, C, h, w) view
    return out[0] if not lead else out.unflatten(0, lead)


def _inside(g: Grid, h: int, w: int, hh: int, ww: int) -> torch.Tensor:
    """``(B', S, 1, h, w)`` mask of window positions inside an ``hh x ww`` map (B' = 1 for shared rows)."""
    ys = g.y0[..., None] + torch.arange(h, device=g.gi.device)
    xs = g.x0[..., None] + torch.arange(w, device=g.gi.device)
    m = ((ys >= 0) & (ys < hh))[..., :, None] & ((xs >= 0) & (xs < ww))[..., None, :]
    return m.reshape((-1,) + m.shape[-3:]).unsqueeze(-3)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def conv_rows_window(op: ConvOp, rows: torch.Tensor):
    """Unit rows of a conv layer as windows at its input: ``(a (B', S, Cin, kh', kw'), grid, bias (B', S))``;
    ``rows`` is ``(S,)`` (shared by the batch, B' = 1) or ``(B, S)`` (per sample)."""
    cout, ho, wo = op.out_shape
    cin, hh, ww = op.in_shape
    d0, d1 = op.dilation
    kh, kw = op.w.shape[2:]
    c, rem = rows // (ho * wo), rows % (ho * wo)
    g = Grid(rem // wo, rem % wo, 1, 0, 1, 0, (ho, wo)).back(op.stride, op.padding)
    a = op.w.new_zeros(rows.shape + (cin, (kh - 1) * d0 + 1, (kw - 1) * d1 + 1))
    a[..., ::d0, ::d1] = op.w[c]
    a = a.reshape((-1,) + a.shape[-4:]) * _inside(g, a.shape[-2], a.shape[-1], hh, ww)
    bias = op.b[c] if op.b is not None else op.w.new_zeros(rows.shape)
    return a, g, bias.reshape(-1, bias.shape[-1])


def _conv_back(op: ConvOp, a, g: Grid, const):
    bp, s = a.shape[:2]
    if op.b is not None:
        const = const + a.sum(dim=(-1, -2)).matmul(op.b)
    flat = a.reshape((bp * s,) + a.shape[2:])
    kh, kw = op.w.shape[2:]
    out_hw = ((a.shape[-2] - 1) * op.stride[0] + (kh - 1) * op.dilation[0] + 1,
              (a.shape[-1] - 1) * op.stride[1] + (kw - 1) * op.dilation[1] + 1)
    out = conv_transpose(flat, op.w, op.stride, (0, 0), op.dilation, op.groups, out_hw)
    out = out.reshape((bp, s) + out.shape[1:])
    ng = g.back(op.stride, op.padding)
    _, hh, ww = op.in_shape
    return out * _inside(ng, out.shape[-2], out.shape[-1], hh, ww), ng, const


def _relu_back(a, g: Grid, const, lo, hi, cache=None):
    from fortify.certify.crown import relu_relax

    h, w = a.shape[-2:]
    sl, su, bu = _gather(lambda: torch.stack(relu_relax(lo, hi)), g, h, w, cache=cache, key=("relu", id(lo), id(hi)))
    pos = a > 0
    const = const + (a * bu).masked_fill_(pos, 0).flatten(2).sum(-1)
    return a * torch.where(pos, sl, su), const


def _maxpool_back(op: MaxPoolOp, a, g: Grid, const, lo, hi, relu=None, cache=None):
    """Windowed MaxPool step (see :func:`fortify.certify.crown._maxpool_back`); ``relu``: bounds of a
    preceding ReLU applied at ``j*`` on the pooled windows (:func:`fortify.certify.crown.fused_relu`)."""
    from fortify.certify.crown import maxpool_relax, relu_at_jstar

    from fortify.certify.crown import memo

    index, decided, upper = memo(cache, ("pool", id(op), id(lo), id(hi)), lambda: maxpool_relax(op, lo, hi))
    b = lo.shape[0]
    c, _, win = op.in_shape
    _, hout, wout = op.out_shape
    h, w = a.shape[-2:]
    k, st, pd, dl = _pair(op.kernel), _pair(op.stride), _pair(op.padding), _pair(op.dilation)
    nh, nw = (h - 1) * st[0] + (k[0] - 1) * dl[0] + 1, (w - 1) * st[1] + (k[1] - 1) * dl[1] + 1
    # offset of j* inside its pooling window, as a flat position of the window-local input map:
    # input row of j* = i * stride - padding + dy, and window-local row = p * stride + dy
    oi = torch.arange(hout, device=a.device).reshape(-1, 1) * st[0] - pd[0]
    oj = torch.arange(wout, device=a.device).reshape(1, -1) * st[1] - pd[1]

    def stacked() -> torch.Tensor:
        idx = index.reshape(b, c, hout, wout)
        off = (idx // win - oi) * nw + (idx % win - oj)
        maps = [off.to(a.dtype), (~decided).to(a.dtype).reshape(off.shape), upper.reshape(off.shape)]
        if relu is not None:
            maps += [m.reshape(off.shape) for m in relu_at_jstar(idx.reshape(b, c, -1), *relu)]
        return torch.stack(maps)

    key = ("wpool", id(op), id(lo), id(hi), id(relu[0]) if relu is not None else None)
    got = _gather(stacked, g, h, w, cache=cache, key=key)  # outside the map: offset 0, decided, 0 (a is 0 there)
    off, und, up = got[0], got[1], got[2]
    ng = g.back(st, pd)
    base = (torch.arange(h, device=a.device).reshape(-1, 1) * (st[0] * nw)
            + torch.arange(w, device=a.device).reshape(1, -1) * st[1])
    flat = off.long() + base  # (B, S, C, h, w)
    neg = a.clamp(max=0) * und  # negative coefficients of undecided windows: constant upper bound
    const = const + (neg * up).flatten(2).sum(-1)
    coef = a - neg
    if relu is not None:
        const = const + (coef.clamp(max=0) * got[5]).flatten(2).sum(-1)
        coef = torch.where(coef > 0, coef * got[3], coef * got[4])
    coef = coef.expand(b, -1, -1, -1, -1)
    s = coef.shape[1]
    out = a.new_zeros(b, s, c, nh * nw)
    out.scatter_add_(3, flat.reshape(b, s, c, -1), coef.reshape(b, s, c, -1))
    return out.reshape(b, s, c, nh, nw), ng, const


def _concretize(inp: InputSet, a, g: Grid, const, cache=None) -> torch.Tensor:
    h, w = a.shape[-2:]
    mid, rad = _gather(lambda: torch.stack([(inp.hi + inp.lo) / 2, (inp.hi - inp.lo) / 2]), g, h, w, cache=cache,
                       key=("input", id(inp.lo), id(inp.hi)))
    box = (a * mid).flatten(2).sum(-1) - (a.abs() * rad).flatten(2).sum(-1)
    if inp.norm == "linf":
        return box + const
    q = 2.0 if inp.norm == "l2" else float("inf")
    x0w = _gather(inp.x, g, h, w)
    dual = (a * x0w).flatten(2).sum(-1) - inp.eps * a.flatten(2).norm(p=q, dim=-1)
    return torch.maximum(box, dual) + const


def windowed_lower(ops: list[Op], t: int, rows: torch.Tensor, bounds: list[tuple[torch.Tensor, torch.Tensor]],
                   inp: InputSet, cache: dict | None = None) -> torch.Tensor:
    """Lower bounds ``(B, 2S)`` of ``+z_r`` (first S) and ``-z_r`` (last S) for the flat neurons
    ``rows`` (``(S,)`` shared, or ``(B, S)`` per sample) of the output of ``ops[t-1]`` (a Conv2d),
    by windowed backward propagation. ``cache``: a dict shared by the chunks of rows of one
    refinement (fixed ``bounds``), keeping the unfolded relaxation windows."""
    conv = ops[t - 1]
    assert isinstance(conv, ConvOp), "windowed_ok admits only a Conv2d here"
    a, g, c0 = conv_rows_window(conv, rows)
    a, c0, g = torch.cat([a, -a], dim=1), torch.cat([c0, -c0], dim=1), g.cat()
    const = c0.expand(inp.x.shape[0], -1)
    from fortify.certify.crown import fused_relu

    k = t - 2
    while k >= 0:
        op = ops[k]
        if isinstance(op, ConvOp):
            a, g, const = _conv_back(op, a, g, const)
        elif isinstance(op, ScaleShiftOp):
            const = const + a.sum(dim=(-1, -2)).matmul(op.shift.expand(a.shape[2]))
            a = a * op.scale.reshape(-1, 1, 1)
        elif isinstance(op, ReLUOp):
            a, const = _relu_back(a, g, const, *bounds[k], cache=cache)
        else:
            assert isinstance(op, MaxPoolOp), "windowed_ok admits Conv2d, ScaleShift, ReLU and MaxPool2d only"
            fuse = fused_relu(ops, k)
            a, g, const = _maxpool_back(op, a, g, const, *bounds[k], relu=bounds[k - 1] if fuse else None, cache=cache)
            k -= int(fuse)
        k -= 1
    return _concretize(inp, a, g, const, cache)
