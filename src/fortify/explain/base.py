"""The attribution protocol: ``attributions = method(model, x, target=None)``.

* ``model``: an ``nn.Module`` mapping ``x (N, *sample)`` to logits ``(N, C)``; never mutated (it runs
  inside :func:`fortify.models.state.frozen`: eval mode, ``requires_grad`` and ``.grad`` restored,
  gradients taken on the input only, never into ``param.grad``).
* ``x``: a floating tensor ``(N, *sample)`` with the model's dtype and declared sample shape, finite
  (images, signals ``(C, L)`` and tables ``(F,)`` alike; no value bounds: tables are standardised).
* ``target``: ``None`` (the predicted class, ``argmax`` of the logits), an int (every row), or an
  integer tensor ``(N,)`` in ``[0, C)``.
* returns a Tensor shaped like ``x`` (detached, the model's dtype): one score per input feature.

:class:`Attribution` is the template: ``__call__`` validates (:mod:`fortify.validation`, the checks
every pillar shares, typed errors), resolves the target, freezes the model, calls the subclass's
``_run`` and checks the result's shape and finiteness. ``batch_size`` is the memory budget: the
number of rows per forward/backward pass, however many rows a method needs (integrated gradients'
``N x steps``, SmoothGrad's ``N x samples``, occlusion's ``N x windows``).
"""
from __future__ import annotations

import abc
import math
from typing import ClassVar

import torch
from torch import nn

from fortify.errors import ConfigError, InputError
from fortify.models.state import frozen
from fortify.protocol import TemplateCall, template
from fortify.registry import Registry
from fortify.validation import check_device, check_images, check_labels, check_logits, check_model_input

from fortify.explain.ops import predict_logits

ATTRIBUTIONS: Registry = Registry("attribution")
#: rows per forward/backward pass unless a method is given another budget
DEFAULT_BATCH_SIZE = 256
UNBOUNDED = (-math.inf, math.inf)


def check_batch_size(value: object) -> int:
    """A positive int (ConfigError otherwise): the rows one forward/backward pass may hold."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"batch_size must be a positive integer (rows per forward pass), got {value!r}")
    return value


def check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_inputs(model: object, x: object, *, name: str = "x") -> torch.Tensor:
    """The shared checks on ``(model, x)``: an ``nn.Module``; ``x`` floating, batched, finite, on the
    model's device, of its dtype and declared sample shape. Returns ``x`` detached."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    xt = check_images(x, UNBOUNDED, name=name)
    check_device(model, xt, name=name)
    check_model_input(model, xt, name=name)
    return xt.detach()


def resolve_target(model: nn.Module, x: torch.Tensor, target: object, batch_size: int) -> tuple[torch.Tensor, int]:
    """``(target (N,) int64 on x's device, number of classes)``; ``None`` -> the predicted class.
    Runs inside ``frozen(model)``. Cost: one forward pass of ``x`` (of one row when a target is given)."""
    n = x.shape[0]
    if target is None:
        logits = check_logits(predict_logits(model, x, batch_size), n)
        return logits.argmax(dim=1), int(logits.shape[1])
    with torch.no_grad():
        classes = int(check_logits(predict_logits(model, x[:1], 1), 1).shape[1])
    if isinstance(target, int) and not isinstance(target, bool):
        target = torch.full((n,), target, dtype=torch.long)
        if not 0 <= int(target[0]) < classes:
            raise InputError(f"target {int(target[0])} is out of range: the model has {classes} classes "
                             f"(targets must be in [0, {classes}))")
    return check_labels(target, n, classes, name="target").to(x.device), classes


class Attribution(TemplateCall, abc.ABC):
    """Base class of attribution methods: subclasses implement :meth:`_run` on a validated batch.

    ``batch_size``: rows per forward/backward pass (the memory budget), default 256.
    """

    #: registry name (set on registration)
    name: ClassVar[str] = ""
    #: whether the method draws random numbers (SmoothGrad); reproducible through its ``seed``
    stochastic: ClassVar[bool] = False

    def __init__(self, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.batch_size = check_batch_size(batch_size)

    @template
    def __call__(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor | int | None = None) -> torch.Tensor:
        x = check_inputs(model, x)
        with frozen(model):
            t, _ = resolve_target(model, x, target, self.batch_size)
            out = self._run(model, x, t)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise RuntimeError(f"{type(self).__name__}._run returned {got}, expected shape {tuple(x.shape)}")
        return out.detach().to(x.dtype)

    @abc.abstractmethod
    def _run(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Attributions ``(N, *sample)`` for a validated batch ``x`` and targets ``(N,)`` int64, with
        the model frozen (eval mode, no parameter gradients)."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


__all__ = ["ATTRIBUTIONS", "Attribution", "DEFAULT_BATCH_SIZE", "check_batch_size", "check_inputs",
           "check_positive_int", "resolve_target"]
