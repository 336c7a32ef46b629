"""Bound-propagation operators, one class per operator family (auto_LiRPA's ``operators/`` is the
model of the design; written independently here).

Each :class:`Op` owns its forward pass, its interval step (IBP), its linear relaxation and its
CROWN backward step (dense, and windowed where ``supports_windows``); a builder registered with
:func:`register_op` turns an ``nn.Module`` into operators. Adding a layer type: one file here with
the class and its ``@register_op(nn.SomeLayer)`` builder (modules of this package are imported by
:func:`fortify.registry.discover`, so the registration runs).

* ``affine``: Linear, Conv2d, BatchNorm (eval) / Normalized as a per-channel scale-shift;
* ``relu``: ReLU (CROWN-Ada / alpha slopes);
* ``pooling``: MaxPool2d (its relaxation, a preceding ReLU absorbed), AvgPool2d (a grouped conv);
* ``reshape``: Flatten, Identity / Dropout, any batch-preserving view (:class:`ViewOp`);
* ``activations``: LeakyReLU, Sigmoid, Tanh (CROWN's chord / tangent relaxations);
* ``lift``: Conv1d, MaxPool1d, AvgPool1d (as their 2-D forms on ``(C, 1, L)``), AdaptiveAvgPool1d/2d;
* ``merge``: the joins of a DAG, residual add / sub (:class:`SumOp`) and ``cat`` (:class:`CatOp`).
"""
from __future__ import annotations

from fortify.certify.ops.activations import ElementwiseOp, LeakyReLUOp, SigmoidOp, TanhOp, leaky_relu_op
from fortify.certify.ops.affine import ConvOp, LinearOp, ScaleShiftOp, conv_transpose
from fortify.certify.ops.base import (
    OP_BUILDERS,
    Interval,
    Op,
    builder_for,
    numel,
    pair,
    register_op,
)
from fortify.certify.ops.cache import RelaxCache, memo
from fortify.certify.ops.merge import CatOp, MergeOp, SumOp
from fortify.certify.ops.pooling import MaxPoolOp, relu_at_jstar
from fortify.certify.ops.relu import ReLUOp, relu_relax
from fortify.certify.ops.reshape import ReshapeOp, ViewOp
from fortify.registry import discover

discover(__name__)

__all__ = [
    "Op", "Interval", "OP_BUILDERS", "register_op", "builder_for", "RelaxCache", "memo", "numel", "pair",
    "LinearOp", "ConvOp", "ScaleShiftOp", "conv_transpose", "ReLUOp", "relu_relax", "MaxPoolOp", "relu_at_jstar",
    "ReshapeOp", "ViewOp", "ElementwiseOp", "LeakyReLUOp", "SigmoidOp", "TanhOp", "leaky_relu_op", "MergeOp",
    "SumOp", "CatOp",
]
