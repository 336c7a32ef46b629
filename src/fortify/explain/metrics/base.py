"""The attribution-metric protocol: ``result = metric(model, x, attributions, target=None)``.

* ``model``, ``x``, ``target``: as for :class:`fortify.explain.base.Attribution` (same checks,
  same errors; ``target=None`` is the predicted class).
* ``attributions``: a finite floating tensor shaped like ``x`` (from any attribution method).
* returns :class:`MetricResult`: ``values (N,)`` one score per example, ``higher_is_better`` (the
  metric's direction, also a class attribute), ``name`` and ``extra`` (curves, per-layer scores).

:class:`AttributionMetric` is the template: ``__call__`` validates, freezes the model
(:func:`fortify.models.state.frozen`), calls ``_run`` and checks the values' shape. Each metric's
docstring gives its paper, direction and cost in forward passes.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from fortify.errors import InputError
from fortify.explain.base import DEFAULT_BATCH_SIZE, check_batch_size, check_inputs, resolve_target
from fortify.models.state import frozen
from fortify.protocol import TemplateCall, template
from fortify.registry import Registry

ATTRIBUTION_METRICS: Registry = Registry("attribution metric")


@dataclass
class MetricResult:
    """``values (N,)``: the metric per example; ``higher_is_better``: its direction; ``name``: the
    metric; ``extra``: metric-specific tensors (deletion/insertion curves ``(N, steps + 1)``,
    randomisation's per-layer correlations ``(N, L)``, ...)."""

    values: torch.Tensor
    higher_is_better: bool
    name: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(self.values.mean())


def check_attributions(attributions: object, x: torch.Tensor) -> torch.Tensor:
    """InputError unless ``attributions`` is a finite floating tensor shaped like ``x``."""
    if not isinstance(attributions, torch.Tensor):
        raise InputError(f"attributions must be a torch.Tensor, got {type(attributions).__name__}")
    if not attributions.is_floating_point():
        raise InputError(f"attributions must be a floating-point tensor, got dtype {attributions.dtype}")
    if attributions.shape != x.shape:
        raise InputError(f"attributions have shape {tuple(attributions.shape)} but x has {tuple(x.shape)}; "
                         "they must be shaped like x")
    if not bool(torch.isfinite(attributions).all()):
        raise InputError("attributions contain NaN or inf values")
    return attributions.detach().to(device=x.device, dtype=x.dtype)


class AttributionMetric(TemplateCall, abc.ABC):
    """Base class of attribution metrics: subclasses set ``higher_is_better`` and write ``_run``."""

    name: ClassVar[str] = ""
    #: the metric's direction
    higher_is_better: ClassVar[bool] = True
    #: whether the metric draws random numbers (reproducible through its ``seed``)
    stochastic: ClassVar[bool] = False

    def __init__(self, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.batch_size = check_batch_size(batch_size)

    @template
    def __call__(self, model: nn.Module, x: torch.Tensor, attributions: torch.Tensor,
                 target: torch.Tensor | int | None = None) -> MetricResult:
        x = check_inputs(model, x)
        attr = check_attributions(attributions, x)
        with frozen(model):
            t, _ = resolve_target(model, x, target, self.batch_size)
            out = self._run(model, x, attr, t)
        values, extra = out if isinstance(out, tuple) else (out, {})
        if not isinstance(values, torch.Tensor) or values.shape != (x.shape[0],):
            got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise RuntimeError(f"{type(self).__name__}._run returned {got}, expected shape ({x.shape[0]},)")
        return MetricResult(values.detach(), self.higher_is_better, self.name or type(self).__name__, dict(extra))

    @abc.abstractmethod
    def _run(self, model: nn.Module, x: torch.Tensor, attributions: torch.Tensor,
             target: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        """Values ``(N,)`` (and optionally a dict of extra tensors) for a validated batch."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


__all__ = ["ATTRIBUTION_METRICS", "AttributionMetric", "MetricResult", "check_attributions"]
