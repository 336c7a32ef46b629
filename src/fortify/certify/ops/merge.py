"""Operators with several tensor inputs (the joins of a DAG): residual ``add`` / ``sub`` and ``cat``.

Both are linear, so IBP and the CROWN step are exact (auto_LiRPA's ``BoundAdd`` / ``BoundConcat``
backward, Xu et al. 2020, "Automatic perturbation analysis for scalable certified robustness and
beyond"): for ``z = sum_i w_i x_i`` the coefficient ``a`` of ``z`` goes to every input as
``w_i a``; for ``z = cat(x_1, ..., x_n, dim)`` the coefficient is sliced along ``dim`` per input.
The DAG driver (:mod:`fortify.certify.dag`) sums the coefficients that reach a tensor from all of
its users. Shapes exclude the batch dimension; ``a`` is ``(B', S, *out)``.
"""
from __future__ import annotations

import torch

from fortify.certify.ops.base import Interval, Op


class MergeOp(Op):
    """A linear operator of ``arity`` tensor inputs with shapes ``in_shapes``."""

    in_shapes: tuple[tuple[int, ...], ...] = ()

    def forward_n(self, xs: list[torch.Tensor]) -> torch.Tensor:
        """``(B, *in_i) -> (B, *out)``."""
        raise NotImplementedError

    def interval_n(self, los: list[torch.Tensor], his: list[torch.Tensor]) -> Interval:
        """IBP (exact for these linear joins)."""
        raise NotImplementedError

    def back_n(self, a: torch.Tensor) -> list[torch.Tensor]:
        """The coefficient ``a (B', S, *out)`` of the output as coefficients of each input."""
        raise NotImplementedError


class SumOp(MergeOp):
    """``sum_i w_i x_i`` with equal input shapes (``add``: weights (1, 1); ``sub``: (1, -1))."""

    def __init__(self, weights: tuple[float, ...], name: str) -> None:
        self.weights, self.name = tuple(float(w) for w in weights), name

    def forward_n(self, xs: list[torch.Tensor]) -> torch.Tensor:
        out = xs[0] * self.weights[0] if self.weights[0] != 1.0 else xs[0]
        for w, x in zip(self.weights[1:], xs[1:]):
            out = out + w * x if w != 1.0 else out + x
        return out

    def interval_n(self, los: list[torch.Tensor], his: list[torch.Tensor]) -> Interval:
        lo = torch.zeros_like(los[0])
        hi = torch.zeros_like(his[0])
        for w, lo_i, hi_i in zip(self.weights, los, his):
            lo = lo + (w * lo_i if w >= 0 else w * hi_i)
            hi = hi + (w * hi_i if w >= 0 else w * lo_i)
        return lo, hi

    def back_n(self, a: torch.Tensor) -> list[torch.Tensor]:
        return [a if w == 1.0 else a * w for w in self.weights]


class CatOp(MergeOp):
    """``torch.cat(xs, dim)``; ``dim`` counts from the first non-batch dimension (0 = channels)."""

    def __init__(self, dim: int, name: str) -> None:
        self.dim, self.name = dim, name

    def forward_n(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, dim=self.dim + 1)

    def interval_n(self, los: list[torch.Tensor], his: list[torch.Tensor]) -> Interval:
        return self.forward_n(los), self.forward_n(his)

    def back_n(self, a: torch.Tensor) -> list[torch.Tensor]:
        sizes = [s[self.dim] for s in self.in_shapes]
        return list(torch.split(a, sizes, dim=self.dim + 2))
