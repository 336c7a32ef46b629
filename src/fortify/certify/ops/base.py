"""The bound-propagation operator protocol and the registry that maps ``nn.Module`` types to operators.

Every operator ``f`` of a traced feed-forward model (``in_shape`` / ``out_shape`` without the batch
dimension, set by :func:`fortify.certify.graph.build_ops`) owns

* ``forward(x)``: ``(B, *in) -> (B, *out)``;
* ``interval(lo, hi)``: interval bound propagation (IBP, Gowal et al. 2018);
* its linear relaxation and ``backward(a, const, lo, hi)``: one step of CROWN's back-substitution
  (Zhang et al. 2018) for ``a (B', S, *out)`` (``B'`` 1 or B, S specification rows) ->
  ``(a' (B', S, *in), const' (B, S))`` such that ``a . f(z) + const >= a' . z + const'`` for every
  ``z`` in the input interval ``[lo, hi] (B, *in)`` of the operator;
* optionally ``window_back``: the same step for receptive-field windows (the windowed strategy,
  :mod:`fortify.certify.patches`; ``supports_windows``), and ``absorbs(prev)``: whether its backward
  step also covers the operator before it (a ReLU fused into a MaxPool).

Linear operators ``f(x) = W x + b`` (``linear = True``) implement ``back(a) = a W`` and
``bias(a) = a . b``; their ``backward`` is exact. A new layer type is one :class:`Op` subclass plus
a builder registered with :func:`register_op` (see :mod:`fortify.certify.ops`).
"""
from __future__ import annotations

import math
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from fortify.certify.ops.window import Grid
from fortify.errors import ConfigError

Interval = tuple[torch.Tensor, torch.Tensor]


def numel(shape: tuple[int, ...]) -> int:
    """Number of elements of a (batch-free) shape."""
    return int(math.prod(shape))


def pair(v: Any) -> tuple[int, int]:
    """``(v, v)`` for an int, else ``tuple(v)``: the 2-D form of a conv / pool hyper-parameter."""
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class Op:
    """Base operator (see the module docstring for the protocol and the tensor shapes)."""

    #: ``f(x) = W x + b`` (``back`` / ``bias`` defined, ``backward`` exact)
    linear: ClassVar[bool] = True
    #: mixes positions (Linear, Conv): IBP through two of them in a row is not exact
    mixing: ClassVar[bool] = False
    #: implements :meth:`window_back` (the windowed strategy may run through it)
    supports_windows: ClassVar[bool] = False
    name: str = ""
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> Interval:
        """IBP: elementwise bounds ``(B, *out)`` of ``f`` over the box ``[lo, hi] (B, *in)``."""
        raise NotImplementedError

    def back(self, a: torch.Tensor) -> torch.Tensor:
        """Linear operators: ``a W`` for ``a (B', S, *out)`` -> ``(B', S, *in)``."""
        raise NotImplementedError(f"{type(self).__name__} is not linear")

    def bias(self, a: torch.Tensor) -> torch.Tensor:
        """Linear operators: ``a . b`` for ``a (B', S, *out)`` -> ``(B', S)``."""
        raise NotImplementedError(f"{type(self).__name__} is not linear")

    def backward(self, a: torch.Tensor, const: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, *,
                 cache: dict | None = None, alpha: torch.Tensor | None = None,
                 below: Interval | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One CROWN back-substitution step: ``(a (B', S, *out), const (B, S))`` ->
        ``(a' (B', S, *in), const')``. ``lo, hi (B, *in)`` bound the operator's input; ``cache`` keeps
        relaxations across chunks; ``alpha``: free lower slopes (alpha-CROWN, ReLU only); ``below``:
        input bounds of the operator before this one when :meth:`absorbs` it. Linear default: exact."""
        return self.back(a), const + self.bias(a)

    def window_back(self, a: torch.Tensor, grid: Grid, const: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, *,
                    cache: dict | None = None, below: Interval | None = None
                    ) -> tuple[torch.Tensor, Grid, torch.Tensor]:
        """:meth:`backward` for windows ``a (B', S, C, h, w)`` whose corners are ``grid`` (see
        :mod:`fortify.certify.ops.window`): returns the windows one operator down, their grid and the
        constant. Only for operators with ``supports_windows``."""
        raise NotImplementedError(f"{type(self).__name__} has no windowed backward step")

    def absorbs(self, prev: "Op") -> bool:
        """Whether :meth:`backward` also performs the step of ``prev`` (the operator before this one)
        when given its input bounds as ``below``. Default: no."""
        return False

    def refine_rows(self, lo: torch.Tensor, hi: torch.Tensor, after: "Op | None") -> torch.Tensor:
        """``(B, N)`` bool: the input neurons whose bounds a CROWN refinement should tighten (the
        relaxation depends on them); ``after`` is the next operator. Default: every neuron."""
        return torch.ones(lo.shape[0], numel(tuple(lo.shape[1:])), dtype=torch.bool, device=lo.device)

    def relevant_inputs(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor | None:
        """``(B, *in)`` bool of the inputs whose bounds the relaxation depends on, or ``None`` (all)."""
        return None

    def rows_back(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(e_r W, e_r . b)`` for the unit functionals of output neurons ``rows (S,)`` (flat
        indices): ``(1, S, *in)`` and ``(1, S)``. Subclasses avoid the dense one-hot product."""
        ref = next((t for t in vars(self).values() if isinstance(t, torch.Tensor)),
                   torch.zeros((), device=rows.device))
        n = numel(self.out_shape)
        a = torch.zeros(1, rows.numel(), n, dtype=ref.dtype, device=ref.device)
        a[0, torch.arange(rows.numel(), device=ref.device), rows] = 1.0
        a = a.reshape((1, rows.numel()) + tuple(self.out_shape))
        return self.back(a), self.bias(a)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


#: ``builder(module, name, in_shape, ref) -> list[Op]``: the operators of one leaf module
#: (``in_shape`` without the batch dim; ``ref`` gives dtype / device)
Builder = Callable[[nn.Module, str, tuple[int, ...], torch.Tensor], list[Op]]

#: module type -> builder; looked up along the module's MRO (the most specific registration wins)
OP_BUILDERS: dict[type[nn.Module], Builder] = {}


def register_op(*types: type[nn.Module]) -> Callable[[Builder], Builder]:
    """Register ``builder`` for the module ``types`` (each at most once)."""

    def deco(builder: Builder) -> Builder:
        for t in types:
            if t in OP_BUILDERS:
                raise ConfigError(f"a bound-propagation builder for {t.__name__} is already registered")
            OP_BUILDERS[t] = builder
        return builder

    return deco


def builder_for(module: nn.Module) -> Builder | None:
    """The registered builder for ``module``'s type (most specific along the MRO), or ``None``."""
    for cls in type(module).__mro__:
        if cls in OP_BUILDERS:
            return OP_BUILDERS[cls]
    return None
