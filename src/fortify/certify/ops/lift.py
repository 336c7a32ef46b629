"""1-D layers and adaptive pooling, lifted to the 2-D operators.

A signal ``(C, L)`` is the image ``(C, 1, L)``: ``Conv1d(k, s, p, d)`` is ``Conv2d`` with kernel
``(1, k)``, stride ``(1, s)``, padding ``(0, p)``, dilation ``(1, d)`` (the weight viewed as
``(C_out, C_in / g, 1, k)``; a view, so bounds stay differentiable in the weight), and likewise
``MaxPool1d`` / ``AvgPool1d``; the views around them are :class:`ViewOp`. Every bound is the 2-D
operator's (the same arithmetic). ``AdaptiveAvgPool1d/2d`` with an output size dividing the input
is an ``AvgPool`` with kernel = stride = input / output (exact); other sizes (overlapping,
uneven windows) are refused.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fortify.certify.ops.affine import ConvOp
from fortify.certify.ops.base import Op, register_op
from fortify.certify.ops.pooling import MaxPoolOp
from fortify.certify.ops.reshape import ViewOp
from fortify.errors import UnsupportedLayerError


def _one(v: Any) -> int:
    """The int of a 1-D layer hyper-parameter (stored as ``k`` or ``(k,)``)."""
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


def _lifted(core: Op, name: str, in_shape: tuple[int, ...]) -> list[Op]:
    """``(C, L)`` -> view ``(C, 1, L)`` -> ``core`` -> squeeze back to ``(C', L')``."""
    c, length = in_shape
    return [ViewOp((c, 1, length), f"{name}.as2d"), core, _Squeeze(f"{name}.as1d")]


class _Squeeze(ViewOp):
    """``(C, 1, L) -> (C, L)``: the view back from a lifted 1-D operator."""

    def __init__(self, name: str) -> None:
        super().__init__((), name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.squeeze(2)


def _signal(in_shape: tuple[int, ...], name: str, kind: str) -> None:
    if len(in_shape) != 2:
        raise UnsupportedLayerError(f"layer {name!r} ({kind}) needs signals (C, L), got input shape {in_shape}")


@register_op(nn.Conv1d)
def _conv1d(m: nn.Module, name: str, in_shape: tuple[int, ...], ref: torch.Tensor) -> list[Op]:
    assert isinstance(m, nn.Conv1d)
    _signal(in_shape, name, "Conv1d")
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise UnsupportedLayerError(f"layer {name!r} (Conv1d with padding={m.padding!r}, "
                                    f"padding_mode={m.padding_mode!r}) is not supported")
    core = ConvOp(m.weight.unsqueeze(2), m.bias, (1, _one(m.stride)), (0, _one(m.padding)), (1, _one(m.dilation)),
                  m.groups, name)
    return _lifted(core, name, in_shape)


@register_op(nn.MaxPool1d)
def _maxpool1d(m: nn.Module, name: str, in_shape: tuple[int, ...], ref: torch.Tensor) -> list[Op]:
    assert isinstance(m, nn.MaxPool1d)
    _signal(in_shape, name, "MaxPool1d")
    k = _one(m.kernel_size)
    s = _one(m.stride) if m.stride is not None else k
    pool2d = nn.MaxPool2d((1, k), (1, s), (0, _one(m.padding)), (1, _one(m.dilation)), m.return_indices, m.ceil_mode)
    return _lifted(MaxPoolOp(pool2d, name), name, in_shape)


def _avg(k: tuple[int, int], s: tuple[int, int], p: tuple[int, int], channels: int, name: str,
         ref: torch.Tensor) -> ConvOp:
    w = torch.full((channels, 1) + k, 1.0 / (k[0] * k[1]), dtype=ref.dtype, device=ref.device)
    return ConvOp(w, None, s, p, (1, 1), channels, name)


@register_op(nn.AvgPool1d)
def _avgpool1d(m: nn.Module, name: str, in_shape: tuple[int, ...], ref: torch.Tensor) -> list[Op]:
    assert isinstance(m, nn.AvgPool1d)
    _signal(in_shape, name, "AvgPool1d")
    k, p = _one(m.kernel_size), _one(m.padding)
    s = _one(m.stride) if m.stride is not None else k
    if m.ceil_mode or (p and not m.count_include_pad):
        raise UnsupportedLayerError(f"layer {name!r} (AvgPool1d with ceil_mode or count_include_pad=False) "
                                    "is not supported")
    return _lifted(_avg((1, k), (1, s), (0, p), in_shape[0], name, ref), name, in_shape)


def _adaptive_kernel(size: int, out: int | None, name: str) -> int:
    out = size if out is None else int(out)
    if out < 1 or size % out:
        raise UnsupportedLayerError(f"layer {name!r} (adaptive average pooling from {size} to {out}) is not "
                                    "supported; the output size must divide the input size")
    return size // out


@register_op(nn.AdaptiveAvgPool2d)
def _adaptive2d(m: nn.Module, name: str, in_shape: tuple[int, ...], ref: torch.Tensor) -> list[Op]:
    """Adaptive average pooling with an output size dividing the input: AvgPool2d(kernel = stride)."""
    assert isinstance(m, nn.AdaptiveAvgPool2d)
    if len(in_shape) != 3:
        raise UnsupportedLayerError(f"layer {name!r} (AdaptiveAvgPool2d) needs images (C, H, W), got {in_shape}")
    out = m.output_size if isinstance(m.output_size, (tuple, list)) else (m.output_size, m.output_size)
    k = (_adaptive_kernel(in_shape[1], out[0], name), _adaptive_kernel(in_shape[2], out[1], name))
    return [_avg(k, k, (0, 0), in_shape[0], name, ref)]


@register_op(nn.AdaptiveAvgPool1d)
def _adaptive1d(m: nn.Module, name: str, in_shape: tuple[int, ...], ref: torch.Tensor) -> list[Op]:
    assert isinstance(m, nn.AdaptiveAvgPool1d)
    _signal(in_shape, name, "AdaptiveAvgPool1d")
    k = _adaptive_kernel(in_shape[1], _one(m.output_size), name)
    return _lifted(_avg((1, k), (1, k), (0, 0), in_shape[0], name, ref), name, in_shape)

