"""Windowed ("patches") backward passes on DAGs: the intermediate bounds of conv feature maps.

The unit functional of a neuron ``(c, i, j)`` of a feature map only reaches its receptive field
below, so the refinement of a value of a :class:`fortify.certify.dag.Dag` starts each row as a
``1 x 1`` window at its own pixel (:mod:`fortify.certify.ops.window`; the idea of auto_LiRPA's
Patches mode, Xu et al. 2020, "Automatic perturbation analysis for scalable certified robustness
and beyond") and asks the operators for their ``window_back`` steps (Conv2d / AvgPool, BatchNorm /
scale-shift, ReLU and the elementwise activations: the same relaxations as their dense
``backward``). At the joins, ``add`` / ``sub`` hand the window to both inputs and a channel ``cat``
slices it; the windows that reach a value from several users sit on the same grid of rows (the
same strides), so they are summed in their common bounding window. A window that becomes as large
as its map (or reaches an operator without a windowed step) is written into a dense map
``(B', S, C, H, W)`` and the pass continues with the dense steps of :func:`fortify.certify.dag.backward`.
The rows are shared by the batch (``B' = 1`` until a relaxation makes them per-sample), as in the
dense refinement, so the bounds are the dense driver's up to float rounding.

Cost per row: ``C * h * w`` floats per value instead of ``C * H * W`` (16-80x less in the first
blocks of a ResNet on 28 x 28 inputs).
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from fortify.certify.bounds import InputSet
from fortify.certify.ops import CatOp, ConvOp, ElementwiseOp, Interval, MergeOp, Op, ReLUOp, ScaleShiftOp, SumOp
from fortify.certify.ops.relu import relu_relax
from fortify.certify.ops.window import Grid, gather
from fortify.certify.patches import _concretize



class Graph(Protocol):
    """What this module reads of a :class:`fortify.certify.dag.Dag` (no import: dag imports us)."""

    ops: list[Op]
    inputs: list[tuple[int, ...]]

    def shape(self, v: int) -> tuple[int, ...]: ...

#: operators whose ``window_back`` is the windowed form of the backward step the dense pass takes
WINDOW_OPS = (ConvOp, ScaleShiftOp, ReLUOp, ElementwiseOp)

#: a window covering this fraction of its map's area becomes a dense map
DENSE_AT = 0.5

#: a coefficient: dense ``(a (B', S, *shape), None)`` or a window ``(a (B', S, C, h, w), grid)``
Coef = tuple[torch.Tensor, Grid | None]


def unit_windows(shape: tuple[int, ...], rows: torch.Tensor, ref: torch.Tensor, b: int) -> tuple[torch.Tensor, Grid]:
    """Rows ``+e_r`` then ``-e_r`` for the flat neurons ``rows (k,)`` of a ``(C, H, W)`` map as
    ``1 x 1`` windows: ``(1, 2k, C, 1, 1)`` and their grid, written per sample (``(b, 2k)``, the
    same rows for every sample) so that the relaxation windows of a refinement are cut once and
    cached (:func:`fortify.certify.ops.window.gather`)."""
    c, h, w = shape
    k = rows.numel()
    ch, rem = rows // (h * w), rows % (h * w)
    a = torch.zeros(1, 2 * k, c, 1, 1, dtype=ref.dtype, device=ref.device)
    ar = torch.arange(k, device=rows.device)
    a[0, ar, ch] = 1.0
    a[0, ar + k, ch] = -1.0
    gi, gj = rem // w, rem % w
    gi, gj = torch.cat([gi, gi]).expand(b, -1), torch.cat([gj, gj]).expand(b, -1)
    return a, Grid(gi, gj, 1, 0, 1, 0, (h, w))


def densify(a: torch.Tensor, g: Grid, shape: tuple[int, ...]) -> torch.Tensor:
    """The windows ``a (B', S, C, h, w)`` at ``g`` (rows shared by the samples: ``(S,)`` or
    ``(B, S)`` with equal rows) written into zero maps ``(B', S, C, H, W)``; window parts outside
    the map are zero (masked by the steps) and dropped."""
    bp, s, c, h, w = a.shape
    _, hh, ww = shape
    y0, x0 = g.y0, g.x0
    if y0.dim() == 2:
        y0, x0 = y0[0], x0[0]
    top, left = max(0, -int(y0.min())), max(0, -int(x0.min()))
    bottom, right = max(0, int(y0.max()) + h - hh), max(0, int(x0.max()) + w - ww)
    buf = a.new_zeros(bp, s, c, hh + top + bottom, ww + left + right)
    ys = (y0 + top)[:, None] + torch.arange(h, device=a.device)
    xs = (x0 + left)[:, None] + torch.arange(w, device=a.device)
    ar = torch.arange(s, device=a.device)[:, None, None]
    buf.permute(1, 3, 4, 0, 2)[ar, ys[:, :, None], xs[:, None, :]] = a.permute(1, 3, 4, 0, 2)
    return buf[..., top:top + hh, left:left + ww]


def _same_rows(g1: Grid, g2: Grid) -> bool:
    return g1.gi is g2.gi and g1.gj is g2.gj and g1.sy == g2.sy and g1.sx == g2.sx


def add_coef(x: Coef, y: Coef, shape: tuple[int, ...]) -> Coef:
    """Sum of two coefficients of the same value: windows on the same grid of rows are summed in
    their common bounding window, anything else densely."""
    (a1, g1), (a2, g2) = x, y
    if g1 is not None and g2 is not None and _same_rows(g1, g2):
        (h1, w1), (h2, w2) = a1.shape[-2:], a2.shape[-2:]
        oy, ox = min(g1.oy, g2.oy), min(g1.ox, g2.ox)
        ey, ex = max(g1.oy + h1, g2.oy + h2), max(g1.ox + w1, g2.ox + w2)
        p1 = F.pad(a1, (g1.ox - ox, ex - g1.ox - w1, g1.oy - oy, ey - g1.oy - h1))
        p2 = F.pad(a2, (g2.ox - ox, ex - g2.ox - w2, g2.oy - oy, ey - g2.oy - h2))
        return _fit(p1 + p2, Grid(g1.gi, g1.gj, g1.sy, oy, g1.sx, ox, g1.ext), shape)
    d1 = a1 if g1 is None else densify(a1, g1, shape)
    d2 = a2 if g2 is None else densify(a2, g2, shape)
    return d1 + d2, None


def _fit(a: torch.Tensor, g: Grid | None, shape: tuple[int, ...]) -> Coef:
    """Keep the window while it is smaller than its ``(C, H, W)`` map, else the dense map."""
    if g is None or a.shape[-2] * a.shape[-1] < DENSE_AT * shape[1] * shape[2]:
        return a, g
    return densify(a, g, shape), None


def _relu_window(a: torch.Tensor, g: Grid, const: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                 cache: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`ReLUOp.window_back` (the same CROWN-Ada relaxation) in fewer passes over ``a``:
    ``a sl + min(a, 0) (su - sl)`` and ``const += min(a, 0) . bu``, the windows of
    ``(sl, su - sl, bu)`` cut once per refinement (cached with the grid)."""
    h, w = a.shape[-2:]

    def maps() -> torch.Tensor:
        sl, su, bu = relu_relax(lo, hi)
        return torch.stack([sl, su - sl, bu])

    sl, gap, bu = gather(maps, g, h, w, cache=cache, key=("dag-relu", id(lo), id(hi)))
    a = a.contiguous()  # a transposed convolution's windows come channels-last: slow mixed-layout products
    neg = a.clamp(max=0)
    const = const + (neg * bu).sum(dim=(-3, -2, -1))
    return torch.addcmul(a * sl, neg, gap), const


def _merge_back(op: MergeOp, a: torch.Tensor, g: Grid | None, shape: tuple[int, ...]) -> list[Coef] | None:
    """A join's step on a window (``None``: not windowed here, densify first)."""
    if g is None:
        return [(p, None) for p in op.back_n(a)]
    if isinstance(op, SumOp):
        return [(a if w == 1.0 else a * w, g) for w in op.weights]
    if isinstance(op, CatOp) and op.dim == 0:
        return [(p, g) for p in torch.split(a, [s[0] for s in op.in_shapes], dim=2)]
    return None


def windowed_refine_lower(dag: Graph, v: int, rows: torch.Tensor, bounds: list[Interval], inp: InputSet,
                          cache: dict | None = None) -> tuple[torch.Tensor, int]:
    """Lower bounds ``(B, 2k)`` of ``+z_r`` (first k) and ``-z_r`` (last k) for the flat neurons
    ``rows (k,)`` of value ``v`` (a ``(C, H, W)`` map), and the largest number of coefficient
    floats per (sample-slot, row) held on the way (for chunking)."""
    a0, g0 = unit_windows(dag.shape(v), rows, bounds[0][0], inp.x.shape[0])
    coef: dict[int, Coef] = {v: (a0, g0)}
    const = bounds[0][0].new_zeros(inp.x.shape[0], a0.shape[1])
    widest = 0
    for t in range(v - 1, -1, -1):
        item = coef.pop(t + 1, None)
        if item is None:
            continue
        a, g = item
        widest = max(widest, a[0, 0].numel() * a.shape[0])
        op, ins = dag.ops[t], dag.inputs[t]
        out_shape = dag.shape(t + 1)
        parts: list[Coef]
        if isinstance(op, MergeOp):
            merged = _merge_back(op, a, g, out_shape)
            if merged is None:
                merged = [(p, None) for p in op.back_n(a if g is None else densify(a, g, out_shape))]
            parts = merged
        elif g is not None and type(op) is ReLUOp and len(out_shape) == 3:
            a, const = _relu_window(a, g, const, *bounds[ins[0]], cache)
            parts = [(a, g)]
        elif g is not None and isinstance(op, WINDOW_OPS) and len(out_shape) == 3:
            a, g, const = op.window_back(a, g, const, *bounds[ins[0]], cache=cache)
            parts = [(a, g)]
        else:
            if g is not None:
                a = densify(a, g, out_shape)
            a, const = op.backward(a, const, *bounds[ins[0]], cache=cache)
            parts = [(a, None)]
        for u, p in zip(ins, parts):
            p = _fit(p[0], p[1], dag.shape(u)) if len(dag.shape(u)) == 3 else p
            coef[u] = add_coef(coef[u], p, dag.shape(u)) if u in coef else p
    a, g = coef.pop(0)
    widest = max(widest, a[0, 0].numel() * a.shape[0])
    if g is None:
        return inp.concretize(a, const), widest
    return _concretize(inp, a, g, const, cache), widest


__all__ = ["Coef", "WINDOW_OPS", "add_coef", "densify", "unit_windows", "windowed_refine_lower"]
