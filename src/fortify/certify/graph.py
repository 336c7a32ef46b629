"""Turn a feed-forward model into a flat list of bound-propagation operators.

Containers: ``nn.Sequential`` (nested) and the ``Normalized`` wrapper (duck-typed: a module with
``inner``, ``mean`` and ``std``; becomes a per-channel affine map ``(x - mean) / std`` before the
inner model). Leaf modules become operators through the builders registered in
:mod:`fortify.certify.ops` (Linear, Conv2d, ReLU, Flatten, BatchNorm1d/2d in eval semantics,
AvgPool2d, MaxPool2d, Identity / Dropout); anything else raises
:class:`fortify.errors.UnsupportedLayerError` naming the layer. Each operator gets its
``in_shape`` / ``out_shape`` from a forward pass of one zero sample.

Any other model (residual ``add``, channel ``cat``, scalar arithmetic, functional activations,
``view``) goes through :func:`build_net`: the model is traced by :func:`fortify.models.graph.trace`
(torch.fx) and each node becomes operators (:func:`dag_from_graph`); a graph that turns out to be a
chain is returned as an operator list (the chain driver), anything else as a
:class:`fortify.certify.dag.Dag`. An unsupported module or function is one
:class:`UnsupportedLayerError` naming it and its node.

The operator classes are re-exported here (their home is :mod:`fortify.certify.ops`).
"""
from __future__ import annotations

import numbers
from typing import Any, Iterator

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
    CatOp,
    MergeOp,
    ScaleShiftOp,
    SigmoidOp,
    SumOp,
    TanhOp,
    ViewOp,
    builder_for,
    leaky_relu_op,
    conv_transpose,
    numel,
)
from fortify.certify.dag import Dag
from fortify.errors import UnsupportedLayerError
from fortify.models.graph import GraphNode, ModelGraph, Ref, trace

__all__ = ["build_ops", "build_net", "dag_from_graph", "Dag", "numel", "conv_transpose", "Op", "LinearOp", "ConvOp", "ScaleShiftOp", "ReshapeOp",
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


def build_net(model: nn.Module, in_shape: tuple[int, ...], ref: torch.Tensor) -> list[Op] | Dag:
    """The operators of any model: the chain walk of :func:`build_ops` where it applies (bounds
    unchanged for ``Sequential`` / ``Normalized`` stacks), else the traced graph
    (:func:`dag_from_graph`), as an operator list when it is a chain and a :class:`Dag` otherwise."""
    try:
        return build_ops(model, in_shape, ref)
    except UnsupportedLayerError:
        if _plain_chain(model):
            raise  # every container is walkable: the message already names the layer
    dag = dag_from_graph(trace(model, tuple(in_shape), ref), ref)
    if all(ins == (t,) for t, ins in enumerate(dag.inputs)):
        return dag.ops
    return dag


def _plain_chain(model: nn.Module) -> bool:
    """Only Sequential / Normalized containers around leaf modules of ``torch.nn``."""
    if _is_normalized(model):
        return _plain_chain(model.inner)  # type: ignore[arg-type]
    if isinstance(model, nn.Sequential):
        return all(_plain_chain(m) for m in model)
    return type(model).__module__.startswith("torch.nn")


def _scalar(v: Any) -> float | None:
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        return float(v)
    return None


def _unsupported(node: GraphNode, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(f"operator {node.op} at node {node.name!r} is not supported by bound propagation: {why}")


def _function_ops(node: GraphNode, g: ModelGraph, tensors: list[int], ref: torch.Tensor) -> list[Op]:
    """Operators of a ``function`` node with tensor inputs ``tensors`` (graph node indices)."""
    op, name = node.op, node.name
    if op == "relu":
        return [ReLUOp(name)]
    if op == "sigmoid":
        return [SigmoidOp(name)]
    if op == "tanh":
        return [TanhOp(name)]
    if op == "leaky_relu":
        slope = node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)
        return [leaky_relu_op(float(slope), name)]
    if op == "identity":
        return []
    if op in ("flatten", "view"):
        return [ViewOp(tuple(node.shape or ()), name)]
    if op == "cat":
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        rank = len(node.shape or ()) + 1
        dim = int(dim) + rank if int(dim) < 0 else int(dim)
        if dim == 0:
            raise _unsupported(node, "concatenation along the batch dimension")
        return [CatOp(dim - 1, name)]
    operands = [a for a in node.args]
    scalars = [_scalar(a) for a in operands if not isinstance(a, Ref)]
    if op in ("add", "sub") and "alpha" in node.kwargs:
        raise _unsupported(node, "the alpha= argument")
    if len(tensors) == 2 and op in ("add", "sub"):
        return [SumOp((1.0, 1.0 if op == "add" else -1.0), name)]
    if len(tensors) != 1 or len(scalars) > 1 or any(v is None for v in scalars):
        raise _unsupported(node, "only tensor +- tensor and tensor (+ - * /) Python number are")
    c = scalars[0] if scalars else None
    ch = (node.shape or (1,))[0]
    ones = torch.ones(ch, dtype=ref.dtype, device=ref.device)
    zeros = torch.zeros(ch, dtype=ref.dtype, device=ref.device)
    first = isinstance(operands[0], Ref)
    if op == "neg":
        return [ScaleShiftOp(-ones, zeros, name)]
    assert c is not None
    if op == "add":
        return [ScaleShiftOp(ones, zeros + c, name)]
    if op == "sub":
        return [ScaleShiftOp(ones, zeros - c, name) if first else ScaleShiftOp(-ones, zeros + c, name)]
    if op == "mul":
        return [ScaleShiftOp(ones * c, zeros, name)]
    if op == "div" and first and c != 0 and "rounding_mode" not in node.kwargs:
        return [ScaleShiftOp(ones / c, zeros, name)]
    raise _unsupported(node, "division of a number by a tensor (or by zero)")


def dag_from_graph(g: ModelGraph, ref: torch.Tensor) -> Dag:
    """Operators of a traced graph: each node's operators (registered builders for modules,
    :func:`_function_ops` for functions, a per-channel affine map for ``normalize``), their shapes
    set by a forward pass of one zero sample. Nodes the output does not depend on are dropped."""
    live = _live(g)
    value: dict[int, int] = {0: 0}
    ops: list[Op] = []
    inputs: list[tuple[int, ...]] = []
    shapes: list[tuple[int, ...]] = [tuple(g.in_shape)]
    samples: list[torch.Tensor] = [torch.zeros((1,) + tuple(g.in_shape), dtype=ref.dtype, device=ref.device)]
    for i, node in enumerate(g.nodes):
        if i == 0 or not live[i] or node.kind == "shape":
            continue
        if node.kind == "constant":
            raise _unsupported(node, "arithmetic with a tensor attribute (a constant tensor operand)")
        tensors = [j for j in node.inputs if g.nodes[j].kind not in ("shape",)]
        if any(g.nodes[j].kind == "constant" for j in tensors):
            raise _unsupported(node, "arithmetic with a constant tensor operand")
        srcs = tuple(value[j] for j in tensors)
        new = _node_ops(node, g, tensors, shapes[srcs[0]] if srcs else (), ref)
        for op in new:
            ins = srcs if op is new[0] else (len(ops),)
            op.in_shape = shapes[ins[0]]
            try:
                with torch.no_grad():
                    if isinstance(op, MergeOp):
                        op.in_shapes = tuple(shapes[v] for v in ins)
                        y = op.forward_n([samples[v] for v in ins])
                    else:
                        y = op.forward(samples[ins[0]])
            except RuntimeError as e:
                raise UnsupportedLayerError(f"layer {op.name!r} cannot take input of shape {op.in_shape}: {e}") from e
            op.out_shape = tuple(y.shape[1:])
            ops.append(op)
            inputs.append(ins)
            shapes.append(op.out_shape)
            samples.append(y)
        value[i] = len(ops) if new else srcs[0]
    if value.get(g.output, 0) != len(ops) or not ops:
        raise UnsupportedLayerError("the model's output is its input (no operator to bound)")
    return Dag(ops, inputs, tuple(g.in_shape))


def _live(g: ModelGraph) -> list[bool]:
    live = [False] * len(g.nodes)
    live[g.output] = True
    for i in range(len(g.nodes) - 1, -1, -1):
        if live[i]:
            for j in g.nodes[i].inputs:
                live[j] = True
    return live


def _node_ops(node: GraphNode, g: ModelGraph, tensors: list[int], in_shape: tuple[int, ...],
              ref: torch.Tensor) -> list[Op]:
    if node.kind == "normalize":
        mean, std = node.args
        inv = 1.0 / std.to(ref)
        return [ScaleShiftOp(inv, -mean.to(ref) * inv, node.name)]
    if node.kind == "module":
        builder = builder_for(node.target)
        if builder is None:
            supported = ", ".join(sorted(t.__name__ for t in OP_BUILDERS))
            raise UnsupportedLayerError(f"layer {node.name!r} ({node.op}) is not supported by bound propagation; "
                                        f"supported: {supported}, and the functions add, sub, cat, scalar mul/div, "
                                        "flatten/view, relu, sigmoid, tanh, leaky_relu")
        return builder(node.target, node.name, in_shape, ref)
    return _function_ops(node, g, tensors, ref)
