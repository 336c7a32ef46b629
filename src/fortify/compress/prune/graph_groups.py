"""Channel groups of any traceable model: which slices of which modules must shrink together.

The dependency-graph idea of Torch-Pruning (Fang et al. 2023, "DepGraph: towards any structural
pruning", CVPR) on fortify's traced DAG (:func:`fortify.models.graph.trace`). Every output channel
of a prunable producer (``Conv1d`` / ``Conv2d`` with ``groups=1``, ``Linear``) is one *element* of a
union-find. Walking the nodes in topological order gives every tensor node a *label* per channel
(dimension 1 of ``(B, C, ...)``, the features of ``(B, F)``): the element that channel carries.

* BatchNorm, depthwise convs (``groups == C_in == C_out``), zero-preserving activations (ReLU,
  LeakyReLU, tanh, GELU, ...), dropout and pooling keep their input's labels;
* ``add`` / ``sub`` / ``mul`` of two tensors of one shape unite the operands' labels channel by
  channel (a residual join couples every producer feeding it);
* ``cat`` along the channels concatenates the labels (an index-range offset per input); along any
  other dimension it unites them like ``add``;
* ``flatten`` / ``view`` to ``(B, C*S)`` repeats each channel's label over its ``S`` features, so a
  Linear consumer loses the whole block ``c*S ... (c+1)*S - 1`` of a pruned channel.

Channels that must never be removed are *fixed*: the model input, the model output (the final
classifier's logits), and every channel passing through an operation that maps 0 to a non-zero
value (sigmoid, ``Normalized``, adding a non-zero scalar or a constant tensor, a division by a
tensor), since there removing a channel is not the same as zeroing it.

A *channel* of a group is one union-find component: every ``(module, dim, index)`` slice it owns
(producer weight rows on dim 0, BatchNorm / depthwise entries on dim 0, consumer weight columns on
dim 1). A *group* is the set of producers coupled through shared components (one per producer in a
plain chain; every producer feeding one residual stream in a ResNet) with its channels.
Cost: one trace (a forward of 2 examples) plus a pass over the nodes, O(total labels).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fortify.errors import UnsupportedLayerError
from fortify.models.graph import GraphNode, ModelGraph, Ref

#: prunable producers (exact types: a subclass may change the layer's meaning)
PRODUCERS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)
#: per-channel layers with parameters that follow their input's channels
NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d)
#: layers that map a zero channel to a zero channel and keep the channel count
ZERO_PRESERVING: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Tanh, nn.Hardtanh, nn.GELU, nn.SiLU, nn.ELU, nn.Hardswish, nn.Mish,
    nn.Softsign, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)
#: layers that keep the channel count but map 0 to a non-zero value: their channels are fixed
FIXING: tuple[type[nn.Module], ...] = (nn.Sigmoid, nn.Softplus, nn.Hardsigmoid)
_PASS_FUNCTIONS = ("relu", "leaky_relu", "tanh", "neg", "identity")


def supported_layers() -> str:
    """Names of the layer types graph channel pruning handles (for error messages)."""
    return ", ".join(t.__name__ for t in PRODUCERS + NORMS + ZERO_PRESERVING + FIXING + (nn.Flatten,))


@dataclass
class ModuleUse:
    """A module the plan touches: ``role`` ``"producer"`` (Conv/Linear: weight ``(O, I, ...)``) or
    ``"follower"`` (BatchNorm, depthwise conv: one entry per channel); ``in_labels`` ``(I,)`` and
    ``out_labels`` ``(O,)`` element ids (a follower's are its input's)."""

    module: nn.Module
    role: str
    in_labels: torch.Tensor
    out_labels: torch.Tensor


@dataclass
class Channel:
    """One prunable unit: the ``(module name, weight dim, index)`` slices removed together, whether it
    is ``fixed`` (never removed) and its union-find ``root``."""

    root: int
    slices: list[tuple[str, int, int]] = field(default_factory=list)
    fixed: bool = False


@dataclass
class ChannelGroup:
    """Producers (module names) whose output channels are coupled, and their coupled ``channels``."""

    producers: tuple[str, ...]
    channels: list[Channel]


class _Elements:
    """Union-find over channel elements with a ``fixed`` flag per component."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.fixed: list[bool] = []

    def new(self, n: int, fixed: bool = False) -> torch.Tensor:
        start = len(self.parent)
        self.parent += list(range(start, start + n))
        self.fixed += [fixed] * n
        return torch.arange(start, start + n)

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, xs: torch.Tensor, ys: torch.Tensor) -> None:
        for a, b in zip(xs.tolist(), ys.tolist()):
            ra, rb = self.find(a), self.find(b)
            if ra != rb:
                self.parent[rb] = ra
                self.fixed[ra] = self.fixed[ra] or self.fixed[rb]

    def fix(self, xs: torch.Tensor) -> None:
        for a in xs.tolist():
            self.fixed[self.find(a)] = True

    def is_fixed(self, a: int) -> bool:
        return self.fixed[self.find(a)]


@dataclass
class ChannelPlan:
    """The analysis of one traced model: ``uses`` (module name -> :class:`ModuleUse`), the element
    union-find and the ``groups``. :meth:`root` maps an element to its channel."""

    graph: ModelGraph
    uses: dict[str, ModuleUse]
    elements: _Elements
    groups: list[ChannelGroup]

    def root(self, element: int) -> int:
        """The union-find root (channel id) of ``element``."""
        return self.elements.find(element)


def _fail(node: GraphNode, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(f"graph channel pruning: node {node.name!r} ({node.op}): {why}")


class _Walker:
    """Assigns channel labels node by node (see the module docstring)."""

    def __init__(self, graph: ModelGraph) -> None:
        self.g = graph
        self.el = _Elements()
        self.labels: list[torch.Tensor | None] = [None] * len(graph.nodes)
        self.uses: dict[str, ModuleUse] = {}

    def run(self) -> None:
        for i, node in enumerate(self.g.nodes):
            if node.kind == "input":
                shape = node.shape or ()
                self.labels[i] = self.el.new(shape[0] if shape else 1, fixed=True)
            elif node.kind == "normalize":
                x = self._in(node, 0)
                self.el.fix(x)
                self.labels[i] = x
            elif node.kind == "module":
                self.labels[i] = self._module(node)
            elif node.kind == "function":
                self.labels[i] = self._function(node)
        out = self.labels[self.g.output]
        if out is not None:
            self.el.fix(out)

    def _in(self, node: GraphNode, k: int) -> torch.Tensor:
        lab = self.labels[node.inputs[k]]
        if lab is None:
            raise _fail(node, "its input is a constant or a shape value, not a feature tensor")
        return lab

    def _shape(self, index: int) -> tuple[int, ...]:
        return self.g.nodes[index].shape or ()

    def _use(self, name: str, module: nn.Module, role: str, x: torch.Tensor, n_out: int) -> torch.Tensor:
        """Record a module call; a module called again shares its elements (its slices must agree)."""
        prev = self.uses.get(name)
        if prev is None:
            out = self.el.new(n_out) if role == "producer" else x
            self.uses[name] = ModuleUse(module, role, x, out)
            return out
        self.el.union(prev.in_labels, x)
        return prev.out_labels

    def _module(self, node: GraphNode) -> torch.Tensor:
        m, x = node.target, self._in(node, 0)
        in_shape, out_shape = self._shape(node.inputs[0]), node.shape or ()
        kind = type(m)
        if kind in PRODUCERS:
            if isinstance(m, nn.Linear) and len(in_shape) != 1:
                raise _fail(node, f"Linear on a tensor of shape {in_shape} (only (B, F) inputs are supported)")
            if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups != 1:
                if not (m.groups == m.in_channels == m.out_channels):
                    raise _fail(node, f"grouped convolution (groups={m.groups}, {m.in_channels} -> "
                                      f"{m.out_channels}); only groups=1 and depthwise groups=C_in=C_out are supported")
                return self._use(node.name, m, "follower", x, len(x))
            return self._use(node.name, m, "producer", x, out_shape[0])
        if kind in NORMS:
            return self._use(node.name, m, "follower", x, len(x))
        if isinstance(m, ZERO_PRESERVING + FIXING):
            if out_shape[:1] != in_shape[:1]:
                raise _fail(node, f"{kind.__name__} changes the channel count {in_shape} -> {out_shape}")
            if isinstance(m, FIXING):
                self.el.fix(x)
            return x
        if isinstance(m, nn.Flatten):
            return self._reshape(node, x, in_shape, out_shape)
        raise _fail(node, f"layer {kind.__name__} is not supported; supported: {supported_layers()}")

    def _reshape(self, node: GraphNode, x: torch.Tensor, in_shape: tuple[int, ...],
                 out_shape: tuple[int, ...]) -> torch.Tensor:
        """Flatten / view: channels kept in place, or flattened into ``(C*S,)`` blocks."""
        if out_shape[:1] == in_shape[:1]:
            return x
        if len(out_shape) == 1 and out_shape[0] == math.prod(in_shape):
            return x.repeat_interleave(math.prod(in_shape[1:]))
        raise _fail(node, f"reshape {in_shape} -> {out_shape} mixes channels (only flattening to (B, C*S) is supported)")

    def _operands(self, node: GraphNode) -> tuple[list[int], list[Any]]:
        """Tensor operand node indices and the other (scalar) positional arguments."""
        tensors = [i for i in node.inputs if self.g.nodes[i].kind != "shape"]
        scalars = [a for a in node.args if not isinstance(a, Ref)]
        return tensors, scalars

    def _function(self, node: GraphNode) -> torch.Tensor:
        op = node.op
        if op in _PASS_FUNCTIONS:
            return self._in(node, 0)
        if op == "sigmoid":
            x = self._in(node, 0)
            self.el.fix(x)
            return x
        if op in ("flatten", "view"):
            src = next(i for i in node.inputs if self.g.nodes[i].kind != "shape")
            lab = self.labels[src]
            if lab is None:
                raise _fail(node, "reshape of a constant")
            return self._reshape(node, lab, self._shape(src), node.shape or ())
        if op == "cat":
            return self._cat(node)
        if op in ("add", "sub", "mul", "div"):
            return self._arith(node)
        raise _fail(node, f"function {op!r} is not supported")

    def _arith(self, node: GraphNode) -> torch.Tensor:
        tensors, scalars = self._operands(node)
        feats = [i for i in tensors if self.labels[i] is not None]
        if not feats:
            raise _fail(node, "arithmetic on constants only")
        labs = [self.labels[i] for i in feats]
        out = labs[0]
        assert out is not None
        shapes = {self._shape(i) for i in feats}
        if len(shapes) > 1:
            raise _fail(node, f"operands of shapes {sorted(shapes)} broadcast; equal shapes are supported")
        for lab in labs[1:]:
            assert lab is not None
            self.el.union(out, lab)
        has_const = len(feats) < len(tensors)
        nonzero_scalar = any(isinstance(s, numbers.Number) and s != 0 for s in scalars)
        if node.op in ("add", "sub"):
            fixes = has_const or nonzero_scalar
        elif node.op == "mul":
            fixes = has_const
        else:  # div: only tensor / scalar keeps a zero channel zero
            fixes = has_const or len(feats) > 1 or node.inputs[0] != feats[0]
        if fixes:
            self.el.fix(out)
        return out

    def _cat(self, node: GraphNode) -> torch.Tensor:
        parts = node.args[0] if node.args else node.kwargs.get("tensors", ())
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        idx = [a.index for a in parts if isinstance(a, Ref)]
        labs = [self.labels[i] for i in idx]
        if len(idx) != len(parts) or any(lab is None for lab in labs):
            raise _fail(node, "cat of a constant tensor")
        rank = len(node.shape or ()) + 1
        dim = int(dim) + rank if int(dim) < 0 else int(dim)
        if dim == 1:
            return torch.cat([lab for lab in labs if lab is not None])
        first = labs[0]
        assert first is not None
        for lab in labs[1:]:
            assert lab is not None
            self.el.union(first, lab)
        return first


def _groups(w: _Walker) -> list[ChannelGroup]:
    """Channels (components) with their slices, grouped by the producers they couple."""
    chans: dict[int, Channel] = {}

    def add(e: int, s: tuple[str, int, int]) -> None:
        r = w.el.find(e)
        chans.setdefault(r, Channel(r, fixed=w.el.is_fixed(r))).slices.append(s)

    for name, use in w.uses.items():
        for pos, e in enumerate(use.in_labels.tolist()):
            add(e, (name, 1 if use.role == "producer" else 0, pos))
        if use.role == "producer":
            for pos, e in enumerate(use.out_labels.tolist()):
                add(e, (name, 0, pos))
    producers = [n for n, u in w.uses.items() if u.role == "producer"]
    parent = {p: p for p in producers}

    def find(p: str) -> str:
        while parent[p] != p:
            p = parent[p]
        return p

    for ch in chans.values():
        ps = sorted({m for m, d, _ in ch.slices if d == 0 and w.uses[m].role == "producer"})
        for p in ps[1:]:
            a, b = find(ps[0]), find(p)
            if a != b:
                parent[b] = a
    members: dict[str, list[str]] = {}
    for p in producers:
        members.setdefault(find(p), []).append(p)
    out: dict[str, ChannelGroup] = {r: ChannelGroup(tuple(ps), []) for r, ps in members.items()}
    for ch in chans.values():
        owner = next((m for m, d, _ in ch.slices if d == 0 and w.uses[m].role == "producer"), None)
        if owner is not None:
            out[find(owner)].channels.append(ch)
    return list(out.values())


def channel_plan(graph: ModelGraph) -> ChannelPlan:
    """The :class:`ChannelPlan` of a traced model (see the module docstring).

    Raises :class:`UnsupportedLayerError` (one line naming the node) for a layer or operation whose
    channel mapping is unknown: LayerNorm / GroupNorm, grouped (non-depthwise) convs, a Linear on
    ``(B, T, F)``, broadcasting arithmetic, reshapes that mix channels."""
    w = _Walker(graph)
    w.run()
    return ChannelPlan(graph, w.uses, w.el, _groups(w))


__all__ = ["Channel", "ChannelGroup", "ChannelPlan", "ModuleUse", "NORMS", "PRODUCERS", "ZERO_PRESERVING",
           "channel_plan", "supported_layers"]
