"""Explanation drift under compression: does a pruned / quantised / distilled model still look at
what the original looked at?

For each attribution method, both models explain the *same* class of the same images (the original
model's prediction unless ``target`` is given) and ``values (N,)`` is the per-image Spearman rank
correlation of the two maps (absolute values with ``absolute=True``;
:func:`fortify.explain.similarity.spearman`). 1: the compressed model's explanation ranks the
features as the original's did; near 0: unrelated maps. A model that cannot be differentiated (an
int8 ONNX Runtime model) is explained through its ``float_twin`` (the float model it was quantised
from) for gradient methods, recorded in ``DriftResult.model``. Cost per method: two calls of the
method on ``N`` images (``2N`` forward and backward passes for saliency) and one rank correlation.

>>> drift = explanation_drift(original, compressed, x[:32], methods=("saliency",))
>>> drift["saliency"].mean, drift["saliency"].interval
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from fortify.errors import ConfigError, FortifyError
from fortify.explain.base import ATTRIBUTIONS, DEFAULT_BATCH_SIZE, check_inputs
from fortify.explain.ops import predict_logits
from fortify.explain.similarity import spearman
from fortify.models.state import eval_mode

__all__ = ["DriftResult", "explanation_drift"]


@dataclass
class DriftResult:
    """``values (N,)``: per-image rank correlation of the compressed model's map with the original's;
    ``model``: which model was explained (``compressed`` or ``float twin``); ``interval``: 95%
    Student-t interval of the mean (None below two images)."""

    method: str
    values: torch.Tensor
    model: str
    interval: tuple[float, float] | None

    @property
    def mean(self) -> float:
        return float(self.values.mean())

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "mean": self.mean, "interval": list(self.interval) if self.interval else None,
                "model": self.model, "n": int(self.values.numel())}


def _interval(v: torch.Tensor) -> tuple[float, float] | None:
    from scipy.stats import t as student_t

    k = int(v.numel())
    if k < 2:
        return None
    half = float(student_t.ppf(0.975, k - 1)) * float(v.double().std(unbiased=True)) / math.sqrt(k)
    m = float(v.double().mean())
    return (m - half, m + half)


def _explain(method: Any, model: nn.Module, twin: nn.Module | None, x: torch.Tensor,
             target: torch.Tensor | int) -> tuple[torch.Tensor, str]:
    """The method's map on ``model``; on ``twin`` when ``model`` has no gradient (ONNX Runtime)."""
    try:
        return method(model, x, target), "compressed"
    except (RuntimeError, FortifyError):
        if twin is None:
            raise
        return method(twin, x, target), "float twin"


def explanation_drift(original: nn.Module, compressed: nn.Module, x: torch.Tensor, *,
                      methods: Sequence[str] = ("saliency",), target: torch.Tensor | int | None = None,
                      float_twin: nn.Module | None = None, absolute: bool = True,
                      options: dict[str, dict[str, Any]] | None = None) -> dict[str, DriftResult]:
    """Per method (registry names, constructor ``options`` per name), the rank correlation of the
    compressed model's attributions with the original's on ``x (N, *sample)``: ``{method: DriftResult}``.
    ``target``: the explained class (default: the original model's prediction, the same for both)."""
    if isinstance(methods, str) or not methods:
        raise ConfigError(f"methods must be a non-empty list of attribution names, got {methods!r}")
    xt = check_inputs(original, x)
    built = {m: ATTRIBUTIONS.create(m, **(options or {}).get(m, {})) for m in methods}
    if target is None:
        with torch.no_grad(), eval_mode(original):
            target = predict_logits(original, xt, DEFAULT_BATCH_SIZE).argmax(dim=1)
    out: dict[str, DriftResult] = {}
    for name, method in built.items():
        ref = method(original, xt, target)
        got, which = _explain(method, compressed, float_twin, xt, target)
        a, b = (ref.abs(), got.abs()) if absolute else (ref, got)
        v = spearman(a, b).double().cpu()
        out[name] = DriftResult(name, v, which, _interval(v))
    return out
