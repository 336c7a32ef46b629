"""Receptive-field windows ("patches") for the windowed backward strategy.

The unit functional of a conv neuron ``(c, i, j)`` only touches its receptive field, so instead of
dense coefficient maps ``(B, S, C, H, W)`` each specification row carries a window
``a (B', S, C, h, w)`` with its top-left corner ``(y0, x0)`` (per row) in the current feature map
(the idea of auto_LiRPA's Patches mode, Xu et al. 2020; written independently here). Windows may
stick out of the map; coefficients there are kept at zero (they would multiply zero padding).
:class:`Grid` holds the corners, :func:`gather` cuts windows of a map (relaxation slopes, input
box) at the corners, :func:`inside` masks the positions inside a map. Operators use these in their
``window_back`` step; the strategy itself is :mod:`fortify.certify.patches`.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fortify.certify.ops.cache import memo


class Grid:
    """Window corners on a regular grid: row ``r`` sits at ``(gi_r * sy + oy, gj_r * sx + ox)``;
    ``gi, gj`` are ``(S,)`` (rows shared by the batch) or ``(B, S)`` (per sample)."""

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
        """The grid of the rows repeated twice (``[a, -a]``: lower and negated upper bound rows)."""
        return Grid(torch.cat([self.gi, self.gi], -1), torch.cat([self.gj, self.gj], -1), self.sy, self.oy, self.sx,
                    self.ox, self.ext)


def gather(maps: Any, g: Grid, h: int, w: int, fill: float = 0.0, cache: dict | None = None,
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


def _gather_per_sample(maps: Any, g: Grid, h: int, w: int, fill: float, cache: dict | None = None,
                       key: tuple = ()) -> torch.Tensor:
    """:func:`gather` for per-sample rows (``g.gi (B, S)``): ``maps (..., B, C, H, W)`` ->
    ``(..., B, S, C, h, w)``, sample ``b``'s windows taken from ``maps[..., b, :, :, :]``. Every grid
    window is cut once by ``unfold`` into ``(B, cells, K*C*h*w)`` rows, then each specification row
    copies its cell's contiguous row (a row gather, much cheaper than element-wise indexing)."""
    n_i, n_j = g.ext if g.ext is not None else (int(g.gi.max()) + 1, int(g.gj.max()) + 1)

    def cells() -> tuple[torch.Tensor, torch.Size, int]:
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

    cols, lead, c = memo(cache if g.ext is not None else None, key + (h, w, g.sy, g.oy, g.sx, g.ox), cells)
    bsz = cols.shape[0]
    cell = g.gi * n_j + g.gj  # (B, S)
    out = cols[torch.arange(bsz, device=cols.device)[:, None], cell]  # (B, S, K*C*h*w)
    out = out.reshape(bsz, cell.shape[1], -1, c, h, w).movedim(2, 0)  # (K, B, S, C, h, w) view
    return out[0] if not lead else out.unflatten(0, lead)


def inside(g: Grid, h: int, w: int, hh: int, ww: int) -> torch.Tensor:
    """``(B', S, 1, h, w)`` mask of window positions inside an ``hh x ww`` map (B' = 1 for shared rows)."""
    ys = g.y0[..., None] + torch.arange(h, device=g.gi.device)
    xs = g.x0[..., None] + torch.arange(w, device=g.gi.device)
    m = ((ys >= 0) & (ys < hh))[..., :, None] & ((xs >= 0) & (xs < ww))[..., None, :]
    return m.reshape((-1,) + m.shape[-3:]).unsqueeze(-3)

