"""A traced graph of any ``nn.Module``: the typed DAG that certification (and pruning) consume.

:func:`trace` runs ``torch.fx.symbolic_trace`` semantics (Reed et al. 2022, "torch.fx: practical
program capture and transformation for deep learning in Python") with the standard ``torch.nn``
layers as leaves and looks through :class:`fortify.models.Normalized` (its ``(x - mean) / std``
becomes a ``normalize`` node; the inner model is traced in place). A shape pass on an example
batch ``(2, *in_shape)`` (zeros, the model in eval mode through :func:`fortify.models.state.eval_mode`
and ``torch.no_grad``; nothing of the model changes) records every node's output shape.

Every node is one of

* ``input``: the model input ``(B, *in_shape)``;
* ``module``: a call of a leaf submodule (``target`` the module, ``op`` its class name);
* ``function``: a call of a tensor function or method, canonicalised to one of :data:`FUNCTIONS`
  (``add``, ``sub``, ``mul``, ``div``, ``neg``, ``cat``, ``flatten``, ``view``, ``relu``, ``sigmoid``,
  ``tanh``, ``leaky_relu``, ``identity``); its non-tensor arguments are kept in ``args``
  (tensor arguments appear as :class:`Ref` to the producing node);
* ``normalize``: the :class:`Normalized` wrapper (``args = (mean, std)``, flat per channel);
* ``constant``: a tensor attribute read by the forward (``target`` the tensor);
* ``shape``: a shape query (``x.size(0)``, ``x.shape[1]``): a value, not a tensor (view / reshape
  nodes refer to them; their own output shape is recorded, so consumers need not evaluate them).

A function outside :data:`FUNCTIONS` (``torch.sort``, ``x.max(...)``, a tensor slice) or a forward
fx cannot trace (data-dependent control flow) raises :class:`fortify.errors.UnsupportedLayerError`
naming the operator and its node. Which *modules* are supported is the consumer's decision (each
analysis has its own operator table). The model is never mutated: tracing builds a separate graph
that only references the model's modules.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from fortify.errors import UnsupportedLayerError
from fortify.models.normalized import Normalized
from fortify.models.state import eval_mode

#: canonical function name -> the callables / method names that mean it
_SPELLINGS: dict[str, tuple[Any, ...]] = {
    "add": (operator.add, operator.iadd, torch.add, "add", "add_"),
    "sub": (operator.sub, operator.isub, torch.sub, "sub"),
    "mul": (operator.mul, operator.imul, torch.mul, "mul"),
    "div": (operator.truediv, operator.itruediv, torch.div, torch.true_divide, "div"),
    "neg": (operator.neg, torch.neg, "neg"),
    "cat": (torch.cat, torch.concat),
    "flatten": (torch.flatten, "flatten"),
    "view": (torch.reshape, "view", "reshape"),
    "relu": (torch.relu, F.relu, "relu", "relu_"),
    "sigmoid": (torch.sigmoid, F.sigmoid, "sigmoid"),
    "tanh": (torch.tanh, F.tanh, "tanh"),
    "leaky_relu": (F.leaky_relu,),
    "identity": ("contiguous", "clone"),
}
FUNCTIONS: tuple[str, ...] = tuple(_SPELLINGS)
_CANON: dict[Any, str] = {s: k for k, v in _SPELLINGS.items() for s in v}
#: shape queries (``x.size(0)``, ``x.shape``, ``x.dim()``, indexing a size): values, not tensors
_SHAPE_QUERIES = ("size", "dim", "shape")


@dataclass(frozen=True)
class Ref:
    """A tensor argument: the output of node ``index``."""

    index: int


@dataclass
class GraphNode:
    """One node: ``kind`` (see the module docstring), canonical ``op``, ``target`` (module, tensor or
    callable), tensor ``inputs`` (node indices, in argument order), the call's ``args`` / ``kwargs``
    with tensors as :class:`Ref`, and ``shape``: the output shape without the batch dimension
    (``None`` for a non-tensor value such as ``x.size(0)``)."""

    name: str
    kind: str
    op: str
    target: Any
    inputs: tuple[int, ...]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    shape: tuple[int, ...] | None = None


@dataclass
class ModelGraph:
    """The traced DAG: ``nodes`` in topological order (node 0 is the input), ``output`` the index of
    the node the forward returns, ``in_shape`` the example shape traced."""

    nodes: list[GraphNode]
    output: int
    in_shape: tuple[int, ...]

    def users(self) -> list[list[int]]:
        """Per node, the indices of the nodes that read it."""
        out: list[list[int]] = [[] for _ in self.nodes]
        for i, n in enumerate(self.nodes):
            for j in n.inputs:
                out[j].append(i)
        return out

    def describe(self) -> str:
        """One line per node: ``index name kind op <- inputs shape``."""
        return "\n".join(f"{i:3d} {n.name} {n.kind} {n.op} <- {list(n.inputs)} {n.shape}"
                         for i, n in enumerate(self.nodes))


class _Tracer(fx.Tracer):
    """fx tracer with the standard layers and ``Normalized`` as leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, Normalized) or super().is_leaf_module(m, module_qualified_name)


def _fn_name(node: fx.Node) -> str:
    t = node.target
    if isinstance(t, str):
        return f"Tensor.{t}"
    mod = getattr(t, "__module__", None) or ""
    return f"{mod}.{getattr(t, '__name__', repr(t))}".lstrip(".")


def _canonical(node: fx.Node, where: str) -> str | None:
    """Canonical name of a function / method node, ``None`` for a shape query; else a typed error."""
    t = node.target
    if (t in _SHAPE_QUERIES) or t is getattr or (t is operator.getitem and _is_shape_value(node.args[0])):
        return None
    try:
        name = _CANON.get(t)
    except TypeError:  # unhashable target
        name = None
    if name is None:
        raise UnsupportedLayerError(
            f"operator {_fn_name(node)} at node {node.name!r} ({where}) is not supported; supported functions: "
            f"{', '.join(FUNCTIONS)}")
    return name


def _is_shape_value(arg: Any) -> bool:
    return isinstance(arg, fx.Node) and arg.op in ("call_method", "call_function") and (
        arg.target in _SHAPE_QUERIES or arg.target is getattr)


class _Builder:
    """Builds the node list while tracing (Normalized wrappers spliced in place)."""

    def __init__(self) -> None:
        self.nodes: list[GraphNode] = []

    def add(self, node: GraphNode) -> int:
        self.nodes.append(node)
        return len(self.nodes) - 1

    def splice(self, model: nn.Module, prefix: str, inp: int) -> int:
        """Trace ``model`` with its input bound to node ``inp``; returns the index of its output node."""
        if isinstance(model, Normalized):
            mean, std = model.mean.reshape(-1), model.std.reshape(-1)
            idx = self.add(GraphNode(f"{prefix}normalize", "normalize", "normalize", model, (inp,), (mean, std)))
            return self.splice(model.inner, f"{prefix}inner.", idx)
        try:
            graph = _Tracer().trace(model)
        except Exception as e:  # fx raises many types (TraceError, TypeError, NotImplementedError, ...)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UnsupportedLayerError(
                f"model {type(model).__name__} ({prefix.rstrip('.') or 'root'}) cannot be traced by torch.fx: "
                f"{first}") from None
        env: dict[fx.Node, Any] = {}
        out, placeholders = -1, 0
        for node in graph.nodes:
            if node.op == "placeholder":
                placeholders += 1
                if placeholders > 1:
                    raise UnsupportedLayerError(f"model {type(model).__name__} takes more than one input "
                                                f"(node {node.name!r}); one tensor input is supported")
                env[node] = Ref(inp)
            elif node.op == "output":
                res = env.get(node.args[0]) if isinstance(node.args[0], fx.Node) else None
                if not isinstance(res, Ref) or self.nodes[res.index].kind == "shape":
                    raise UnsupportedLayerError(f"model {type(model).__name__} must return one tensor "
                                                f"(node {node.name!r} returns {node.args[0]!r})")
                out = res.index
            else:
                env[node] = self._node(model, prefix, node, env)
        return out

    def _node(self, model: nn.Module, prefix: str, node: fx.Node, env: dict[fx.Node, Any]) -> Any:
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        refs = tuple(a.index for a in _flat(args) + _flat(kwargs) if isinstance(a, Ref))
        name = prefix + str(node.target) if node.op in ("call_module", "get_attr") else prefix + node.name
        if node.op == "get_attr":
            value = _getattr(model, str(node.target))
            if not isinstance(value, torch.Tensor):
                return value
            return Ref(self.add(GraphNode(name, "constant", "constant", value, ())))
        if node.op == "call_module":
            sub = model.get_submodule(str(node.target))
            if len(refs) != 1 or len(args) != 1 or kwargs:
                raise UnsupportedLayerError(f"layer {name!r} ({type(sub).__name__}) is called with "
                                            f"{len(args)} arguments; one tensor is supported")
            if isinstance(sub, Normalized):
                return Ref(self.splice(sub, name + ".", refs[0]))
            return Ref(self.add(GraphNode(name, "module", type(sub).__name__, sub, refs)))
        stack = node.meta.get("nn_module_stack") or {}
        where = (f"in layer {prefix + str(list(stack.values())[-1][0])!r} ({list(stack.values())[-1][1].__name__})"
                 if stack else f"in {type(model).__name__}.forward")
        op = _canonical(node, where)
        kind = "shape" if op is None else "function"
        return Ref(self.add(GraphNode(name, kind, op or "shape", node.target, refs, tuple(args), dict(kwargs))))


def _flat(v: Any) -> list[Any]:
    if isinstance(v, (tuple, list)):
        return [y for x in v for y in _flat(x)]
    if isinstance(v, dict):
        return [y for x in v.values() for y in _flat(x)]
    return [v]


def _getattr(model: nn.Module, path: str) -> Any:
    obj: Any = model
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def call_function(node: GraphNode, vals: list[Any]) -> Any:
    """Apply a ``function`` / ``shape`` node to the node values ``vals`` (``Ref`` arguments resolved)."""

    def sub(a: Any) -> Any:
        if isinstance(a, Ref):
            return vals[a.index]
        if isinstance(a, (tuple, list)):
            return type(a)(sub(v) for v in a)
        return a

    fn: Callable[..., Any] | str = node.target
    args, kwargs = sub(node.args), {k: sub(v) for k, v in node.kwargs.items()}
    if isinstance(fn, str):
        return getattr(args[0], fn)(*args[1:], **kwargs)
    return fn(*args, **kwargs)


def evaluate(node: GraphNode, vals: list[Any]) -> Any:
    """The value of one non-input node given the values ``vals`` of the nodes before it."""
    if node.kind == "constant":
        return node.target
    if node.kind == "normalize":
        t = vals[node.inputs[0]]
        shape = (1, -1) + (1,) * (t.dim() - 2)
        return (t - node.args[0].reshape(shape).to(t)) / node.args[1].reshape(shape).to(t)
    if node.kind == "module":
        return node.target(vals[node.inputs[0]])
    return call_function(node, vals)


def trace(model: nn.Module, in_shape: tuple[int, ...], ref: torch.Tensor | None = None) -> ModelGraph:
    """The traced graph of ``model`` for inputs ``(B, *in_shape)`` with every node's output shape.

    ``ref`` gives dtype / device of the example batch (default float32 on the model's device). The
    shape pass uses a batch of 2: every tensor node must keep dimension 0 as the batch (a reshape
    mixing it in is refused). Raises :class:`UnsupportedLayerError` for a forward fx cannot trace,
    an unsupported function, or a node failing on the example. Cost: one symbolic trace and one
    forward pass of 2 zero inputs (no gradients, the model's flags restored)."""
    b = _Builder()
    b.add(GraphNode("input", "input", "input", None, (), shape=tuple(in_shape)))
    out = b.splice(model, "", 0)
    g = ModelGraph(b.nodes, out, tuple(in_shape))
    dtype = ref.dtype if ref is not None else torch.float32
    device = ref.device if ref is not None else next((p.device for p in model.parameters()), torch.device("cpu"))
    vals: list[Any] = [torch.zeros((2,) + tuple(in_shape), dtype=dtype, device=device)]
    with eval_mode(model), torch.no_grad():
        for node in g.nodes[1:]:
            try:
                v = evaluate(node, vals)
            except (RuntimeError, TypeError, ValueError, IndexError) as e:
                raise UnsupportedLayerError(f"node {node.name!r} ({node.op}) fails on an input of shape "
                                            f"{tuple(in_shape)}: {str(e).splitlines()[0] if str(e) else e}") from None
            vals.append(v)
            if node.kind in ("function", "module", "normalize") and isinstance(v, torch.Tensor):
                if v.dim() == 0 or v.shape[0] != 2:
                    raise UnsupportedLayerError(f"node {node.name!r} ({node.op}) does not keep the batch dimension "
                                                f"(output shape {tuple(v.shape)} for a batch of 2)")
                node.shape = tuple(v.shape[1:])
            elif node.kind == "constant":
                node.shape = tuple(v.shape)
    return g


def execution_order(model: nn.Module, x: torch.Tensor, modules: list[tuple[str, nn.Module]]) -> list[str]:
    """Names of ``modules`` in the order one forward pass of ``x[:1]`` runs them (a module run twice appears
    twice): forward order, not registration order (a residual block's shortcut is registered after the convs it
    skips). The hooks are always removed. Cost: one forward of one row, without gradients."""
    from fortify.validation import forward_checked

    order: list[str] = []
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: order.append(n)) for n, m in modules]
    try:
        with torch.no_grad():
            forward_checked(model, x[:1])
    finally:
        for h in handles:
            h.remove()
    return order


__all__ = ["FUNCTIONS", "GraphNode", "ModelGraph", "Ref", "call_function", "evaluate", "execution_order", "trace"]
