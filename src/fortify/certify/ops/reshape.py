"""Shape-only operators: Flatten (any reshape) and the eval-mode no-ops Identity / Dropout."""
from __future__ import annotations

import torch
from torch import nn

from fortify.certify.ops.base import Interval, Op, register_op


class _SameElements(Op):
    """A batch-preserving reshape: intervals map through ``forward``, coefficients are reshaped back
    to the input shape, and there is no bias term."""

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> Interval:
        return self.forward(lo), self.forward(hi)

    def back(self, a: torch.Tensor) -> torch.Tensor:
        return a.reshape(a.shape[:2] + tuple(self.in_shape))

    def bias(self, a: torch.Tensor) -> torch.Tensor:
        return a.new_zeros(a.shape[:2])


class ReshapeOp(_SameElements):
    """``nn.Flatten(start_dim, end_dim)``: ``(B, *in) -> (B, *out)``, the same elements."""

    def __init__(self, start_dim: int, end_dim: int, name: str) -> None:
        self.start_dim, self.end_dim, self.name = start_dim, end_dim, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, self.start_dim, self.end_dim)


@register_op(nn.Flatten)
def _flatten(m: nn.Module, name: str, in_shape: tuple[int, ...], ref: torch.Tensor) -> list[Op]:
    assert isinstance(m, nn.Flatten)
    return [ReshapeOp(m.start_dim, m.end_dim, name)]


@register_op(nn.Identity, nn.Dropout)
def _no_op(m: nn.Module, name: str, in_shape: tuple[int, ...], ref: torch.Tensor) -> list[Op]:
    """Identity, and Dropout in eval mode (the certified model): no operator."""
    return []


class ViewOp(_SameElements):
    """Any batch-preserving reshape: ``(B, *in) -> (B, *shape)`` (``view`` / ``reshape`` /
    ``unsqueeze`` in a traced graph, and the 1-D <-> 2-D views around Conv1d / pooling)."""

    def __init__(self, shape: tuple[int, ...], name: str) -> None:
        self.shape, self.name = tuple(shape), name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape((x.shape[0],) + self.shape)

