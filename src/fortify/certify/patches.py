"""The windowed ("patches") strategy for the intermediate bounds of conv layers.

The unit functional of a conv neuron only touches its receptive field, so each specification row
carries a window with its corner instead of a dense coefficient map (:mod:`fortify.certify.ops.window`;
the idea of auto_LiRPA's Patches mode, Xu et al. 2020, written independently here). The strategy
starts from :meth:`ConvOp.window_rows` and asks every operator below for its ``window_back`` step
(the same relaxations as the dense ``backward``, so the bounds are identical), then concretises
the windows over the input set. :func:`windowed_ok` says when it applies (every operator below
``supports_windows``, 4-D maps); else CROWN uses dense maps.
"""
from __future__ import annotations

import torch

from fortify.certify.bounds import InputSet
from fortify.certify.ops import ConvOp, Interval, Op
from fortify.certify.ops.window import Grid, gather


def windowed_ok(ops: list[Op], t: int) -> bool:
    """Whether the rows of ``ops[t-1]`` (a Conv2d) can be propagated as windows down to the input."""
    if t < 1:
        return False
    conv = ops[t - 1]
    if not isinstance(conv, ConvOp) or conv.groups != 1 or len(ops[0].in_shape) != 3:
        return False
    return all(op.supports_windows for op in ops[:t - 1])


def _concretize(inp: InputSet, a: torch.Tensor, g: Grid, const: torch.Tensor,
                cache: dict | None = None) -> torch.Tensor:
    """:meth:`InputSet.concretize` for windows ``a (B', S, C, h, w)`` at ``g``: ``(B, S)``."""
    h, w = a.shape[-2:]
    mid, rad = gather(lambda: torch.stack([(inp.hi + inp.lo) / 2, (inp.hi - inp.lo) / 2]), g, h, w, cache=cache,
                      key=("input", id(inp.lo), id(inp.hi)))
    box = (a * mid).flatten(2).sum(-1) - (a.abs() * rad).flatten(2).sum(-1)
    if inp.norm == "linf":
        return box + const
    q = 2.0 if inp.norm == "l2" else float("inf")
    x0w = gather(inp.x, g, h, w)
    dual = (a * x0w).flatten(2).sum(-1) - inp.eps * a.flatten(2).norm(p=q, dim=-1)
    return torch.maximum(box, dual) + const


def windowed_lower(ops: list[Op], t: int, rows: torch.Tensor, bounds: list[Interval],
                   inp: InputSet, cache: dict | None = None) -> torch.Tensor:
    """Lower bounds ``(B, 2S)`` of ``+z_r`` (first S) and ``-z_r`` (last S) for the flat neurons
    ``rows`` (``(S,)`` shared, or ``(B, S)`` per sample) of the output of ``ops[t-1]`` (a Conv2d),
    by windowed backward propagation. ``cache``: a dict shared by the chunks of rows of one
    refinement (fixed ``bounds``), keeping the unfolded relaxation windows."""
    conv = ops[t - 1]
    assert isinstance(conv, ConvOp), "windowed_ok admits only a Conv2d here"
    a, g, c0 = conv.window_rows(rows)
    a, c0, g = torch.cat([a, -a], dim=1), torch.cat([c0, -c0], dim=1), g.cat()
    const = c0.expand(inp.x.shape[0], -1)
    k = t - 2
    while k >= 0:
        op = ops[k]
        fuse = k >= 1 and op.absorbs(ops[k - 1])
        a, g, const = op.window_back(a, g, const, *bounds[k], cache=cache, below=bounds[k - 1] if fuse else None)
        k -= 1 + int(fuse)
    return _concretize(inp, a, g, const, cache)
