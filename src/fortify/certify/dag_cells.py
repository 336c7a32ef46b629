"""Cell-grouped windows: the intermediate bounds of a whole feature map of a DAG, channels-last.

:mod:`fortify.certify.dag_win` starts one receptive-field window per refined neuron and cuts the
relaxation windows per row. When (nearly) every channel of a pixel is refined -- the last blocks of
a ResNet, where almost every neuron is unstable -- the rows can be grouped by pixel ("cell"): the
``2 C`` rows ``+e_(c,i,j)``, ``-e_(c,i,j)`` of cell ``(i, j)`` share their window everywhere below,
so a coefficient is one tensor ``a (B', P, R, h, w, C)`` (``P`` cells, ``R = 2 C_v`` rows each,
channels last) and the relaxation windows ``(B, P, 1, h, w, C)`` are cut once per cell and
broadcast over the rows (no per-row gather). The steps are those of
:func:`fortify.certify.dag.backward` (CROWN, Zhang et al. 2018, on a DAG as in auto_LiRPA, Xu et
al. 2020), written for this layout:

* Conv2d: a transposed convolution of each window without padding on channels-last views (no
  layout copies), the window grows by the kernel and is cropped to the positions that lie inside
  the map for at least one cell of the chunk (exact: the others only meet zero padding);
* a BatchNorm / scale-shift read only by a ReLU is fused into that ReLU's step (slopes scaled,
  its shift folded into the constant);
* ReLU (CROWN-Ada): ``a sl + min(a, 0) (su - sl)``, ``const += min(a, 0) . bu``; the relaxation
  windows are zero outside the map, which also clears the coefficients there;
* ``add`` / ``sub`` hand the window to every input, a channel ``cat`` slices it; coefficients that
  reach a value from several users are summed in their bounding window.

Positions of a window outside the map are zeroed (masked) before a step that moves or sums them
(conv, scale-shift, the input's dual norm). Cost per (sample, row): ``C h w`` floats per value,
with ``h x w`` at most the map; every step is one or two passes over ``a``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from fortify.certify.bounds import InputSet
from fortify.certify.ops import CatOp, ConvOp, Interval, Op, ReLUOp, ScaleShiftOp, SumOp
from fortify.certify.ops.affine import conv_transpose
from fortify.certify.ops.cache import memo
from fortify.certify.ops.relu import relu_relax
from fortify.certify.ops.window import Grid, gather

class Graph(Protocol):
    """What this module reads of a :class:`fortify.certify.dag.Dag` (no import: dag imports us)."""

    ops: list[Op]
    inputs: list[tuple[int, ...]]

    def shape(self, v: int) -> tuple[int, ...]: ...

    def users(self) -> list[list[int]]: ...


#: operator types this module steps through
CELL_OPS = (ConvOp, ScaleShiftOp, ReLUOp, SumOp, CatOp)


@dataclass
class Plan:
    """What a refinement of value ``v`` needs: per value its stride scale below ``v``, the ReLUs
    whose BatchNorm is fused (ReLU op index -> the BatchNorm's op index)."""

    v: int
    scale: dict[int, tuple[int, int]]
    fuse: dict[int, int]


@dataclass
class _Win:
    """A coefficient ``a (B', P, R, h, w, C)``; cell ``p``'s window corner is
    ``(gi_p sy + oy, gj_p sx + ox)``. ``owned``: ``a`` is not shared (may be added to in place);
    ``clean``: positions outside the map are known to be zero."""

    a: torch.Tensor
    oy: int
    ox: int
    sy: int
    sx: int
    owned: bool
    clean: bool


def plan_cells(dag: Graph, v: int) -> Plan | None:
    """The plan for value ``v`` of ``dag`` (a :class:`fortify.certify.dag.Dag`), or ``None`` when an
    ancestor is not a supported operator, a value is not a ``(C, H, W)`` map, or two paths reach a
    value at different strides."""
    ops, inputs, shape = dag.ops, dag.inputs, dag.shape
    users = dag.users()
    scale: dict[int, tuple[int, int]] = {v: (1, 1)}
    fuse: dict[int, int] = {}
    for t in range(v - 1, -1, -1):
        if t + 1 not in scale:
            continue
        op, ins = ops[t], inputs[t]
        if type(op) not in CELL_OPS or len(shape(t + 1)) != 3 or any(len(shape(u)) != 3 for u in ins):
            return None
        if isinstance(op, CatOp) and op.dim != 0:
            return None
        sy, sx = scale[t + 1]
        if isinstance(op, ConvOp):
            sy, sx = sy * op.stride[0], sx * op.stride[1]
        for u in ins:
            if scale.setdefault(u, (sy, sx)) != (sy, sx):
                return None
        u = ins[0]
        if type(op) is ReLUOp and u >= 1 and type(ops[u - 1]) is ScaleShiftOp and users[u] == [t]:
            fuse[t] = u - 1
    return Plan(v, scale, fuse)


def _mask(w: _Win, cells: tuple[torch.Tensor, torch.Tensor], hw: tuple[int, ...]) -> _Win:
    """Zero the window positions outside the ``hw`` map."""
    if w.clean:
        return w
    h, wd = w.a.shape[-3:-1]
    ys = cells[0][:, None] * w.sy + w.oy + torch.arange(h, device=w.a.device)
    xs = cells[1][:, None] * w.sx + w.ox + torch.arange(wd, device=w.a.device)
    my, mx = (ys >= 0) & (ys < hw[0]), (xs >= 0) & (xs < hw[1])
    if bool(my.all()) and bool(mx.all()):
        return _Win(w.a, w.oy, w.ox, w.sy, w.sx, w.owned, True)
    m = (my[:, :, None] & mx[:, None, :]).to(w.a.dtype)[:, None, :, :, None]  # (P, 1, h, w, 1)
    return _Win(w.a.mul_(m) if w.owned else w.a * m, w.oy, w.ox, w.sy, w.sx, True, True)


def _crop(w: _Win, cells: tuple[torch.Tensor, torch.Tensor], hw: tuple[int, ...]) -> _Win:
    """Drop window rows / columns outside the map for every cell of the chunk (exact)."""
    h, wd = w.a.shape[-3:-1]
    lo_y, hi_y = int(cells[0].min()) * w.sy + w.oy, int(cells[0].max()) * w.sy + w.oy
    lo_x, hi_x = int(cells[1].min()) * w.sx + w.ox, int(cells[1].max()) * w.sx + w.ox
    y0, y1 = max(0, -hi_y), min(h, hw[0] - lo_y)
    x0, x1 = max(0, -hi_x), min(wd, hw[1] - lo_x)
    clean = lo_y + y0 >= 0 and hi_y + y1 <= hw[0] and lo_x + x0 >= 0 and hi_x + x1 <= hw[1]
    if (y0, y1, x0, x1) == (0, h, 0, wd):
        return _Win(w.a, w.oy, w.ox, w.sy, w.sx, w.owned, clean)
    # one compact copy: the steps below reshape the window (a strided view would be copied twice)
    return _Win(w.a[:, :, :, y0:y1, x0:x1].contiguous(), w.oy + y0, w.ox + x0, w.sy, w.sx, True, clean)


def _windows(maps: torch.Tensor, w: _Win, cells: tuple[torch.Tensor, torch.Tensor],
             nhwc: torch.Tensor | None = None) -> torch.Tensor:
    """Windows of ``maps (K, B, C, H, W)`` at the cells' corners, zero outside the map:
    ``(K, B, P, 1, h, w, C)``. One cell whose window lies inside the map: a view of ``nhwc``
    (``maps`` channels last, ``(K, B, H, W, C)``), no copy."""
    h, wd = w.a.shape[-3:-1]
    if nhwc is not None and cells[0].numel() == 1:
        y0, x0 = int(cells[0][0]) * w.sy + w.oy, int(cells[1][0]) * w.sx + w.ox
        if y0 >= 0 and x0 >= 0 and y0 + h <= nhwc.shape[2] and x0 + wd <= nhwc.shape[3]:
            return nhwc[:, :, None, None, y0:y0 + h, x0:x0 + wd]
    g = Grid(cells[0], cells[1], w.sy, w.oy, w.sx, w.ox)
    out = gather(maps, g, h, wd)  # (K, B, P, C, h, w)
    return out.permute(0, 1, 2, 4, 5, 3).unsqueeze(3).contiguous()


def _dot(a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``sum over (h, w, C)`` of ``a (B', P, R, h, w, C) * m (B, P, 1, h, w, C)``: ``(B, P, R)``.
    Few (sample, cell) blocks: one matrix-vector product each (batched matrix-vector kernels and
    einsum's reshapes are 2-10x slower at these shapes); shared rows (``B' = 1``): one GEMM per cell."""
    af, mf = a.reshape(a.shape[:3] + (-1,)), m.reshape(m.shape[:2] + (-1,))
    bp, p = af.shape[:2]
    b = mf.shape[0]
    if bp == 1 and b > 1:
        if p <= _LOOP_BLOCKS:
            return torch.stack([af[0, j].mm(mf[:, j].t()) for j in range(p)], dim=1).permute(2, 1, 0)
        return torch.einsum("prk,bpk->bpr", af[0], mf)
    if bp * p <= _LOOP_BLOCKS:
        return torch.stack([af[i, j].mv(mf[i, j]) for i in range(bp) for j in range(p)]).reshape(bp, p, -1)
    return torch.einsum("bprk,bpk->bpr", af, mf)


#: at most this many (sample, cell) blocks: :func:`_dot` loops over them
_LOOP_BLOCKS = 64


def _scratch(store: dict, shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
    """A scratch tensor of ``shape`` carved from one flat buffer kept in ``store`` (grown when
    too small): the ReLU steps of a refinement reuse its pages instead of faulting in fresh ones."""
    n = 1
    for d in shape:
        n *= d
    buf = store.get("cells-scratch")
    if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
        buf = store["cells-scratch"] = like.new_empty(n)
    return buf[:n].view(shape)


def _relu_step(w: _Win, maps: tuple[torch.Tensor, torch.Tensor], const: torch.Tensor, cells: tuple[torch.Tensor, torch.Tensor],
               fused: bool, scratch: dict) -> tuple[_Win, torch.Tensor]:
    """CROWN-Ada step (a BatchNorm below fused when ``fused``): ``maps`` stacks ``(sl, gap, bu[, p])``
    with ``sl, gap`` already scaled by the BatchNorm and ``p = sl * shift``, ``bu += gap * shift``."""
    win = _windows(maps[0], w, cells, maps[1])
    a = w.a
    neg = torch.clamp(a, max=0, out=_scratch(scratch, a.shape, a))
    const = const + _dot(neg, win[2])
    if fused:
        const = const + _dot(a, win[3])
    # in place when ``a`` is ours and already per sample: fewer large allocations (page faults)
    new = a.mul_(win[0]) if w.owned and a.shape[0] == win.shape[1] else a * win[0]
    return _Win(new.addcmul_(neg, win[1]), w.oy, w.ox, w.sy, w.sx, True, True), const


def _relu_maps(op_bn: ScaleShiftOp | None, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K, B, C, H, W)``: ``sl, su - sl, bu`` of the ReLU (CROWN-Ada), composed with ``op_bn``;
    and the same channels last."""
    sl, su, bu = relu_relax(lo, hi)
    gap = su - sl
    if op_bn is None:
        maps = torch.stack([sl, gap, bu])
    else:
        sc, sh = op_bn.scale.reshape(-1, 1, 1), op_bn.shift.reshape(-1, 1, 1)
        maps = torch.stack([sl * sc, gap * sc, bu + gap * sh, sl * sh])
    return maps, _nhwc(maps)


def _nhwc(maps: torch.Tensor) -> torch.Tensor:
    """``(K, B, C, H, W) -> (K, B, H, W, C)`` contiguous."""
    return maps.permute(0, 1, 3, 4, 2).contiguous()


def _conv_step(op: ConvOp, w: _Win, const: torch.Tensor, cells: tuple[torch.Tensor, torch.Tensor]
               ) -> tuple[_Win, torch.Tensor]:
    """Transposed convolution of every window (no padding), corner one layer down, cropped."""
    w = _mask(w, cells, op.out_shape[1:])
    a = w.a
    if op.b is not None:
        const = const + a.sum(dim=(3, 4)).matmul(op.b)
    bp, p, r, h, wd, c = a.shape
    kh, kw = op.w.shape[2:]
    (s0, s1), (d0, d1) = op.stride, op.dilation
    out_hw = ((h - 1) * s0 + (kh - 1) * d0 + 1, (wd - 1) * s1 + (kw - 1) * d1 + 1)
    cin = op.in_shape[0]
    if op.groups == 1 and h == wd == 1 and (d0, d1) == (1, 1):  # 1 x 1 windows: the kernel itself, one GEMM
        out = a.reshape(-1, c).matmul(op.w.permute(0, 2, 3, 1).reshape(c, -1))
    elif op.groups == 1 and cin * kh * kw <= 64:  # few input channels (a grey stem): one GEMM + shifted adds
        out = _conv_t_small(a.reshape(-1, h, wd, c), op.w, op.stride, op.dilation, out_hw)
    else:
        x = a.reshape(-1, h, wd, c).permute(0, 3, 1, 2)  # channels-last view of (N, C, h, w)
        out = conv_transpose(x, op.w, op.stride, (0, 0), op.dilation, op.groups, out_hw).permute(0, 2, 3, 1)
    out = out.reshape(bp, p, r, out_hw[0], out_hw[1], cin)
    nw = _Win(out, w.oy * s0 - op.padding[0], w.ox * s1 - op.padding[1], w.sy * s0, w.sx * s1, True, False)
    return _crop(nw, cells, op.in_shape[1:]), const


def _conv_t_small(a: torch.Tensor, w: torch.Tensor, stride: tuple[int, ...], dilation: tuple[int, ...],
                  out_hw: tuple[int, int]) -> torch.Tensor:
    """Transposed convolution without padding of ``a (N, h, w, C_out)`` (channels last) with
    ``w (C_out, C_in, kh, kw)``: ``(N, H', W', C_in)``. One GEMM gives every kernel tap's
    contribution as planes ``(kh, kw, C_in, N, h, w)``, ``kh * kw`` strided plane additions place
    them (the CPU kernels for few output channels, ``fold``'s per-sample loop and the skinny
    ``(N h w, C_out) x (C_out, taps)`` GEMM are several times slower)."""
    n, h, wd, cout = a.shape
    _, cin, kh, kw = w.shape
    cols = w.permute(2, 3, 1, 0).reshape(-1, cout).mm(a.reshape(-1, cout).t()).reshape(kh, kw, cin, n, h, wd)
    out = a.new_zeros(cin, n, out_hw[0], out_hw[1])
    (s0, s1), (d0, d1) = stride, dilation
    for dy in range(kh):
        for dx in range(kw):
            out[:, :, dy * d0:dy * d0 + (h - 1) * s0 + 1:s0, dx * d1:dx * d1 + (wd - 1) * s1 + 1:s1] += cols[dy, dx]
    return out.permute(1, 2, 3, 0)


def _scale_step(op: ScaleShiftOp, w: _Win, const: torch.Tensor, cells: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[_Win, torch.Tensor]:
    """A scale-shift not fused into a ReLU: ``a -> a scale``, ``const += a . shift``."""
    w = _mask(w, cells, op.out_shape[1:])
    const = const + w.a.sum(dim=(3, 4)).matmul(op.shift.expand(w.a.shape[-1]))
    return _Win(w.a.mul_(op.scale) if w.owned else w.a * op.scale, w.oy, w.ox, w.sy, w.sx, True, True), const


def _add(x: _Win, y: _Win) -> _Win:
    """Sum of two coefficients of one value (same strides): in place when one window holds the
    other and is not shared, else in a new bounding window."""
    (hx, wx), (hy, wy) = x.a.shape[-3:-1], y.a.shape[-3:-1]
    oy, ox = min(x.oy, y.oy), min(x.ox, y.ox)
    ey, ex = max(x.oy + hx, y.oy + hy), max(x.ox + wx, y.ox + wy)
    bp = max(x.a.shape[0], y.a.shape[0])
    clean = x.clean and y.clean
    for big, small in ((x, y), (y, x)):
        if big.owned and (big.oy, big.ox) == (oy, ox) and big.a.shape[-3:-1] == (ey - oy, ex - ox) \
                and big.a.shape[0] == bp:
            hs, ws = small.a.shape[-3:-1]
            big.a[:, :, :, small.oy - oy:small.oy - oy + hs, small.ox - ox:small.ox - ox + ws] += small.a
            return _Win(big.a, oy, ox, x.sy, x.sx, True, clean)
    out = x.a.new_zeros(bp, *x.a.shape[1:3], ey - oy, ex - ox, x.a.shape[-1])
    for z in (x, y):
        hz, wz = z.a.shape[-3:-1]
        out[:, :, :, z.oy - oy:z.oy - oy + hz, z.ox - ox:z.ox - ox + wz] += z.a
    return _Win(out, oy, ox, x.sy, x.sx, True, clean)


def _input_maps(inp: InputSet) -> tuple[torch.Tensor, torch.Tensor]:
    """The input box's centre and radius ``(2, B, C, H, W)``, and the same channels last."""
    mid_rad = torch.stack([(inp.hi + inp.lo) / 2, (inp.hi - inp.lo) / 2])
    return mid_rad, _nhwc(mid_rad)


def _concretize(inp: InputSet, w: _Win, const: torch.Tensor, cells: tuple[torch.Tensor, torch.Tensor],
                cache: dict | None = None) -> torch.Tensor:
    """Lower bound ``(B, P, R)`` of the windows over the input set (as :meth:`InputSet.concretize`)."""
    mid_rad, mid_rad_nhwc = memo(cache, ("cells-input", id(inp.lo), id(inp.hi)), lambda: _input_maps(inp))
    mid, rad = _windows(mid_rad, w, cells, mid_rad_nhwc)  # zero outside the map
    if inp.norm == "linf":  # |a| in place when ``a`` is ours (the last use of ``a``)
        box = _dot(w.a, mid)
        return box - _dot(w.a.abs_() if w.owned else w.a.abs(), rad) + const
    box = _dot(w.a, mid) - _dot(w.a.abs(), rad)
    w = _mask(w, cells, tuple(inp.x.shape[-2:]))
    a = w.a
    q = 2.0 if inp.norm == "l2" else float("inf")
    x0 = _windows(inp.x.unsqueeze(0), w, cells)[0]
    dual = _dot(a, x0) - inp.eps * a.reshape(a.shape[:3] + (-1,)).norm(p=q, dim=-1)
    return torch.maximum(box, dual) + const


def cells_refine_lower(dag: Graph, plan: Plan, cells: torch.Tensor, bounds: list[Interval], inp: InputSet,
                       cache: dict | None = None, chans: torch.Tensor | None = None) -> torch.Tensor:
    """Lower bounds ``(B, P, 2 k)`` of ``+z_(c, p)`` (first ``k``) and ``-z_(c, p)`` (last ``k``) for
    the channels ``c`` in ``chans (k,)`` (default: all ``C``) of the flat pixels ``cells (P,)`` of
    value ``plan.v`` (a ``(C, H, W)`` map)."""
    ops, inputs = dag.ops, dag.inputs
    cv, hv, wv = dag.shape(plan.v)
    ij = (cells // wv, cells % wv)
    b = inp.x.shape[0]
    eye = torch.eye(cv, dtype=inp.lo.dtype, device=inp.lo.device)
    if chans is not None:
        eye = eye[chans]
    k = eye.shape[0]
    a0 = torch.cat([eye, -eye]).reshape(1, 1, 2 * k, 1, 1, cv).expand(1, cells.numel(), -1, -1, -1, -1)
    coef: dict[int, _Win] = {plan.v: _Win(a0, 0, 0, 1, 1, False, True)}
    const = inp.lo.new_zeros(b, cells.numel(), 2 * k)
    scratch = cache if cache is not None else {}
    for t in range(plan.v - 1, -1, -1):
        w = coef.pop(t + 1, None)
        if w is None:
            continue
        op, ins = ops[t], inputs[t]
        targets = list(ins)
        if isinstance(op, ReLUOp):
            bn = plan.fuse.get(t)
            bn_op = ops[bn] if bn is not None else None
            op_bn = bn_op if isinstance(bn_op, ScaleShiftOp) else None  # plan_cells fuses scale-shifts only
            lo_hi = bounds[ins[0]]
            maps = memo(cache, ("cells-relu", t, id(lo_hi[0])), lambda: _relu_maps(op_bn, *lo_hi))
            w, const = _relu_step(w, maps, const, ij, op_bn is not None, scratch)
            if bn is not None:
                targets = list(inputs[bn])
            parts = [w]
        elif isinstance(op, ConvOp):
            w, const = _conv_step(op, w, const, ij)
            parts = [w]
        elif isinstance(op, ScaleShiftOp):
            w, const = _scale_step(op, w, const, ij)
            parts = [w]
        elif isinstance(op, SumOp):
            parts = [_Win(w.a if k == 1.0 else w.a * k, w.oy, w.ox, w.sy, w.sx, k != 1.0, w.clean)
                     for k in op.weights]
        else:
            assert isinstance(op, CatOp)
            splits = torch.split(w.a, [s[0] for s in op.in_shapes], dim=-1)
            parts = [_Win(s, w.oy, w.ox, w.sy, w.sx, False, w.clean) for s in splits]
        for u, part in zip(targets, parts):
            if part.a.shape[3] == 0 or part.a.shape[4] == 0:  # the window meets only zero padding
                continue
            coef[u] = _add(coef[u], part) if u in coef else part
    if 0 not in coef:  # no path reaches the input inside the map: the rows are constant
        return const
    return _concretize(inp, coef.pop(0), const, ij, cache)


def cell_bytes(dag: Graph, plan: Plan, batch: int) -> int:
    """Bytes of one cell's widest coefficient (all ``2 C_v`` rows, ``batch`` samples): an upper
    estimate from the uncropped windows."""
    ops, inputs, shape = dag.ops, dag.inputs, dag.shape
    size: dict[int, tuple[int, int]] = {plan.v: (1, 1)}
    widest = shape(plan.v)[0]
    for t in range(plan.v - 1, -1, -1):
        if t + 1 not in size:
            continue
        h, w = size[t + 1]
        op = ops[t]
        if isinstance(op, ConvOp):
            (kh, kw), (s0, s1), (d0, d1) = op.w.shape[2:], op.stride, op.dilation
            h, w = (h - 1) * s0 + (kh - 1) * d0 + 1, (w - 1) * s1 + (kw - 1) * d1 + 1
        for u in inputs[t]:
            old = size.get(u, (0, 0))
            size[u] = (max(old[0], h), max(old[1], w))
            c = shape(u)[0]
            widest = max(widest, c * size[u][0] * size[u][1])
    return widest * 4 * 2 * shape(plan.v)[0] * batch


__all__ = ["CELL_OPS", "Graph", "Plan", "cell_bytes", "cells_refine_lower", "plan_cells"]
