"""The Transform protocol, :class:`TransformResult`, the ``TRANSFORMS`` registry and layer helpers.

``result = transform(model, example_inputs, *, data=None)`` returns ``TransformResult(model,
report)``: ``model`` is a new module (deep copy), ``report`` a JSON-ready dict of what the transform
did (sparsity, ranks, bytes, ...). The input model is never mutated: :meth:`Transform.__call__`
(a final template method) deep-copies it, runs the subclass's :meth:`Transform._run` on the copy
and verifies with parameter hashes and train/eval flags that the input is unchanged.

Compression works on fortify's model family: an ``nn.Sequential`` of ``Conv2d``, ``Linear``,
``ReLU``, ``MaxPool2d``, ``Flatten`` (and ``Dropout``/``Identity``), optionally inside
:class:`fortify.models.Normalized`. Anything else raises :class:`UnsupportedLayerError`.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from fortify.errors import ConfigError, InputError, UnsupportedLayerError
from fortify.models import Normalized
from fortify.models.state import fingerprint
from fortify.protocol import TemplateCall, template
from fortify.registry import Registry
from fortify.validation import check_device, check_images, check_model_input, check_pair, probe_num_classes

#: Layers compression can walk (parametric: Conv2d, Linear; the rest are shape/activation ops).
SUPPORTED = (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)
Data = tuple[torch.Tensor, torch.Tensor]


@dataclass
class TransformResult:
    """Outcome of a transform: the new ``model``, a JSON-ready ``report`` dict and ``extras``.

    ``extras`` holds non-JSON companions, e.g. ``extras["float_twin"]``: the float model an int8
    ONNX model was quantized from (the surrogate of transfer attacks).
    """

    model: nn.Module
    report: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


def sequential_of(model: nn.Module) -> nn.Sequential:
    """The ``nn.Sequential`` compression operates on (``model.inner`` for :class:`Normalized`).

    Raises UnsupportedLayerError naming the first layer that is not in :data:`SUPPORTED`.
    """
    seq = model.inner if isinstance(model, Normalized) else model
    if not isinstance(seq, nn.Sequential):
        raise UnsupportedLayerError(
            f"compression needs an nn.Sequential (optionally inside Normalized), got {type(seq).__name__}"
        )
    for i, layer in enumerate(seq):
        if not isinstance(layer, SUPPORTED):
            raise UnsupportedLayerError(
                f"layer {i} ({type(layer).__name__}) is not supported by compression; supported: "
                + ", ".join(c.__name__ for c in SUPPORTED)
            )
        if isinstance(layer, nn.Conv2d) and (layer.groups != 1 or layer.padding_mode != "zeros"):
            raise UnsupportedLayerError(f"layer {i}: grouped or non-zero-padded Conv2d is not supported")
    return seq


def weight_layers(model: nn.Module) -> list[tuple[int, nn.Conv2d | nn.Linear]]:
    """``(index, layer)`` of every Conv2d/Linear in the compressible Sequential, in order."""
    return [(i, m) for i, m in enumerate(sequential_of(model)) if isinstance(m, (nn.Conv2d, nn.Linear))]


def check_fraction(value: object, name: str, *, allow_one: bool = False) -> float:
    """A float in ``[0, 1)`` (``[0, 1]`` with ``allow_one``); ConfigError otherwise."""
    v = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    if not (0.0 <= v and (v <= 1.0 if allow_one else v < 1.0)):  # NaN (not a number, inf) fails both
        rng = "[0, 1]" if allow_one else "[0, 1)"
        raise ConfigError(f"{name} must be a number in {rng}, got {value!r}")
    return v


def check_int(value: object, name: str, lo: int = 1) -> int:
    """An int ``>= lo`` (bools refused); ConfigError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


#: the input box compression data and example inputs must lie in (fortify's pixel space)
INPUT_BOUNDS: tuple[float, float] = (0.0, 1.0)


def check_data(data: object, name: str = "data", *, num_classes: int | None = None) -> Data:
    """Validate ``(x (N, ...), y (N,))`` with the shared checks of :func:`fortify.validation.check_pair`
    (floating x, finite, inside :data:`INPUT_BOUNDS`; integer y of shape ``(N,)``, below
    ``num_classes`` when given). ConfigError if missing, InputError if malformed."""
    if data is None:
        raise ConfigError(f"this transform needs {name}=(x, y) training data")
    return check_pair(data, name=name, bounds=INPUT_BOUNDS, num_classes=num_classes)


def check_transform_inputs(model: object, example_inputs: object, data: object, *,
                           needs_data: bool) -> tuple[torch.Tensor, Data | None]:
    """The checks of :meth:`Transform.__call__` (one forward pass of one example, model flags restored).

    ``example_inputs`` and ``data``'s x must have the model's dtype and declared sample shape, lie in
    :data:`INPUT_BOUNDS` and be finite; ``data``'s labels must be below the model's class count.
    ``data`` is checked whenever given, and required when ``needs_data``.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    ex = check_images(example_inputs, INPUT_BOUNDS, name="example_inputs")
    check_device(model, ex, name="example_inputs")
    check_model_input(model, ex, name="example_inputs")
    classes = probe_num_classes(model, ex, name="example_inputs")
    if data is None and not needs_data:
        return ex, None
    pair = check_data(data, num_classes=classes)
    check_model_input(model, pair[0], name="data x")
    if pair[0].shape[1:] != ex.shape[1:] or pair[0].dtype != ex.dtype:
        raise InputError(f"data x has samples of shape {tuple(pair[0].shape[1:])} ({pair[0].dtype}) but "
                         f"example_inputs has {tuple(ex.shape[1:])} ({ex.dtype})")
    check_device(model, pair[0], name="data x")
    return ex, pair


class Transform(TemplateCall):
    """Base class of compression transforms; subclasses implement :meth:`_run` on a private copy.

    ``needs_data``: whether ``data=(x, y)`` is required. ``name``: the registry name.
    """

    name: str = ""
    needs_data: bool = False

    @template
    def __call__(self, model: nn.Module, example_inputs: torch.Tensor, *, data: Data | None = None) -> TransformResult:
        """Validate, copy ``model``, apply, and check the input was left untouched.

        ``example_inputs``: ``(B, *sample_shape)`` in [0, 1] with the model's dtype, used for shape
        tracing and reports. Inputs are checked by :func:`check_transform_inputs` (typed errors).
        """
        example_inputs, data = check_transform_inputs(model, example_inputs, data, needs_data=self.needs_data)
        before = fingerprint(model)
        work = copy.deepcopy(model)
        with torch.random.fork_rng():
            result = self._run(work, example_inputs.detach(), data)
        if fingerprint(model) != before:  # pragma: no cover - a bug in a transform, not user input
            raise RuntimeError(f"transform {self.name!r} mutated its input model")
        result.model.eval()
        result.report.setdefault("transform", self.name or type(self).__name__)
        return result

    def _run(self, model: nn.Module, example_inputs: torch.Tensor, data: Data | None) -> TransformResult:
        """Run the algorithm on ``model`` (the private deep copy) and return its result and report."""
        raise NotImplementedError

    def __repr__(self) -> str:
        """Class name and hyper-parameters."""
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


TRANSFORMS: Registry[Callable[..., Transform]] = Registry("transform")


def create(name: str, **kwargs: Any) -> Transform:
    """Instantiate the transform registered as ``name`` (ConfigError naming the allowed keywords for an unknown one)."""
    return TRANSFORMS.create(name, **kwargs)


def count_params(model: nn.Module) -> tuple[int, int]:
    """``(nonzero, total)`` parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    return nonzero, total


__all__ = [
    "INPUT_BOUNDS", "SUPPORTED", "TRANSFORMS", "Transform", "TransformResult", "check_data", "check_transform_inputs",
    "check_fraction", "check_int",
    "count_params", "create", "sequential_of", "weight_layers",
]
