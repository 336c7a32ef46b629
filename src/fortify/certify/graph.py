"""Turn a feed-forward model into a flat list of bound-propagation operators.

Containers: ``nn.Sequential`` (nested) and the ``Normalized`` wrapper (duck-typed: a module with
``inner``, ``mean`` and ``std``; becomes a per-channel affine map ``(x - mean) / std`` before the
inner model). Leaf modules become operators through the builders registered in
:mod:`fortify.certify.ops` (Linear, Conv2d, ReLU, Flatten, BatchNorm1d/2d in eval semantics,
AvgPool2d, MaxPool2d, Identity / Dropout); anything else raises
:class:`fortify.errors.UnsupportedLayerError` naming the layer. Each operator gets its
``in_shape`` / ``out_shape`` from a forward pass of one zero sample.

The operator classes are re-exported here (their home is :mod:`fortify.certify.ops`).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from fortify.certify.ops import (
    OP_BUILDERS,
    ConvOp,
    LinearOp,
    MaxPoolOp,
    Op,
    ReLUOp,
    ReshapeOp,
    ScaleShiftOp,
    builder_for,
    conv_transpose,
    numel,
)
from fortify.errors import UnsupportedLayerError

__all__ = ["build_ops", "numel", "conv_transpose", "Op", "LinearOp", "ConvOp", "ScaleShiftOp", "ReshapeOp",
           "ReLUOp", "MaxPoolOp"]


def _is_normalized(m: nn.Module) -> bool:
    return all(hasattr(m, k) for k in ("inner", "mean", "std")) and isinstance(getattr(m, "inner"), nn.Module)


def _leaves(model: nn.Module, prefix: str = "") -> Iterator[tuple[nn.Module | Op, str]]:
    """``(leaf module or ready operator, dotted name)`` in execution order."""
    name = prefix or type(model).__name__
    if _is_normalized(model):
        std, mean = model.std, model.mean
        if not isinstance(std, torch.Tensor) or not isinstance(mean, torch.Tensor):
            raise UnsupportedLayerError(f"layer {name!r} (Normalized with non-tensor mean/std) is not supported")
        inv = 1.0 / std.reshape(-1)
        yield ScaleShiftOp(inv, -mean.reshape(-1) * inv, f"{name}.normalize"), f"{name}.normalize"
        inner = model.inner
        assert isinstance(inner, nn.Module)
        yield from _leaves(inner, f"{prefix}.inner" if prefix else "inner")
    elif isinstance(model, nn.Sequential):
        for child_name, child in model.named_children():
            yield from _leaves(child, f"{prefix}.{child_name}" if prefix else child_name)
    else:
        yield model, name


def build_ops(model: nn.Module, in_shape: tuple[int, ...], ref: torch.Tensor) -> list[Op]:
    """The operator list of ``model`` for inputs ``(B, *in_shape)`` (``ref``: dtype / device), with
    ``in_shape`` / ``out_shape`` set by a forward pass of one zero sample ``(1, *in_shape)``."""
    ops: list[Op] = []
    x = torch.zeros((1,) + tuple(in_shape), dtype=ref.dtype, device=ref.device)
    with torch.no_grad():
        for item, name in _leaves(model):
            if isinstance(item, Op):
                new = [item]
            else:
                builder = builder_for(item)
                if builder is None:
                    supported = ", ".join(sorted(t.__name__ for t in OP_BUILDERS))
                    raise UnsupportedLayerError(
                        f"layer {name!r} ({type(item).__name__}) is not supported by bound propagation; "
                        f"supported: Sequential, Normalized, {supported}")
                new = builder(item, name, tuple(x.shape[1:]), ref)
            for op in new:
                op.in_shape = tuple(x.shape[1:])
                try:
                    x = op.forward(x)
                except RuntimeError as e:
                    raise UnsupportedLayerError(
                        f"layer {op.name!r} cannot take input of shape {op.in_shape}: {e}") from e
                op.out_shape = tuple(x.shape[1:])
                ops.append(op)
    return ops
