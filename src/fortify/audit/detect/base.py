"""The detector protocol: ``fitted = detector.fit(model, x_train, y_train)``; ``fitted.score(x) -> (N,)``.

* ``model``: an ``nn.Module`` mapping ``x (N, *sample)`` to logits ``(N, C)``; never mutated (fit and score run
  inside :func:`fortify.models.state.frozen`: eval mode, ``requires_grad`` and ``.grad`` restored; features are
  taken by forward hooks removed in a ``finally``).
* ``x_train (N, *sample)``, ``y_train (N,)``: in-distribution data the detector is fitted on (class means,
  feature banks, percentiles); detectors that need nothing (MSP, energy) only check it.
* ``fitted.score(x)``: ``(N,)`` float, detached, **higher = more anomalous** (out-of-distribution or adversarial).
  ``fitted.score_graph(x)``: the same score still attached to the autograd graph of ``x`` (for the adaptive
  attack; input preprocessing is treated as a constant there, i.e. BPDA, Athalye et al. 2018).
* ``fitted.threshold(x_in, tpr=0.95)``: the score below which a fraction ``tpr`` of in-distribution inputs falls
  (the operating point of FPR@95TPR).

:meth:`Detector.fit` is the template: it validates (the checks every pillar shares, typed errors), freezes the
model and calls the subclass's ``_fit``, which returns the fitted state (a dict of tensors). Subclasses write
``_fit`` and ``_score``. A :class:`Detector` remembers its last fit, so ``detector.score(x)`` before any ``fit``
is a :class:`NotFittedError`.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from fortify.audit.calibration import check_inputs
from fortify.errors import ConfigError, InputError
from fortify.models.state import frozen
from fortify.registry import Registry
from fortify.validation import check_labels, check_logits, forward_checked

DETECTORS: Registry = Registry("detector")
DEFAULT_BATCH_SIZE = 256


class NotFittedError(InputError):
    """A detector was asked to score inputs before it was fitted."""


def check_positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_nonnegative(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, C)`` of ``x`` (with gradients when the caller enables them)."""
    return check_logits(forward_checked(model, x), x.shape[0])


@dataclass
class FittedDetector:
    """A detector fitted on one model: ``score(x) (N,)``, higher = more anomalous; never mutates ``model``."""

    detector: "Detector"
    model: nn.Module
    state: dict[str, Any] = field(default_factory=dict)
    sample_shape: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return self.detector.name

    def _check(self, x: object) -> torch.Tensor:
        xt = check_inputs(self.model, x)
        if self.sample_shape and tuple(xt.shape[1:]) != self.sample_shape:
            raise InputError(f"x has samples of shape {tuple(xt.shape[1:])} but the detector was fitted on "
                             f"{self.sample_shape}")
        return xt

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly scores ``(N,)`` (float, detached), chunked by the detector's ``batch_size``."""
        xt = self._check(x)
        out = []
        bs = self.detector.batch_size
        with frozen(self.model):
            for s in range(0, xt.shape[0], bs):
                with torch.no_grad():
                    out.append(self.detector._score(self.model, self.state, xt[s:s + bs]).detach())
        scores = torch.cat(out).to(xt.dtype)
        if scores.shape != (xt.shape[0],):
            raise RuntimeError(f"{type(self.detector).__name__}._score returned {tuple(scores.shape)}, expected "
                               f"({xt.shape[0]},)")
        return scores

    def score_graph(self, x: torch.Tensor) -> torch.Tensor:
        """Scores ``(N,)`` attached to the graph of ``x`` (one batch, no chunking); for attacks on the detector.
        The model is frozen by the caller (an attack's ``__call__``) or here."""
        with frozen(self.model), torch.enable_grad():
            return self.detector._score(self.model, self.state, x)

    def threshold(self, x_in: torch.Tensor, tpr: float = 0.95) -> float:
        """The ``ceil(tpr N)``-th smallest score of in-distribution ``x_in``: accepting scores ``<=`` it keeps a
        fraction ``tpr`` of them (the FPR@95TPR operating point)."""
        if not 0 < tpr <= 1:
            raise ConfigError(f"tpr must be in (0, 1], got {tpr!r}")
        s = self.score(x_in).sort().values
        return float(s[max(1, math.ceil(tpr * s.numel() - 1e-9)) - 1])


class Detector(abc.ABC):
    """Base class of OOD / adversarial-input detectors; subclasses implement ``_fit`` and ``_score``.

    ``differentiable``: whether ``_score`` is differentiable in ``x`` (the adaptive attack then descends it
    directly; otherwise it uses BPDA / score-based search). ``batch_size``: rows per forward pass when scoring.
    """

    name: ClassVar[str] = ""
    differentiable: ClassVar[bool] = True

    def __init__(self, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.batch_size = check_count(batch_size, "batch_size")
        self._fitted: FittedDetector | None = None

    def fit(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> FittedDetector:
        """Fit on in-distribution ``x (N, *sample)`` and ``y (N,)`` (validated; InputError for bad data)."""
        xt = check_inputs(model, x)
        with frozen(model), torch.no_grad():
            classes = int(logits_of(model, xt[:1]).shape[1])
        yt = check_labels(y, xt.shape[0], classes).to(xt.device)
        with frozen(model):
            state = self._fit(model, xt, yt)
        self._fitted = FittedDetector(self, model, state, tuple(xt.shape[1:]))
        return self._fitted

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Scores of the last fit (:class:`NotFittedError` before any :meth:`fit`)."""
        if self._fitted is None:
            raise NotFittedError(f"the {self.name or type(self).__name__} detector is scored before fit(): call "
                                 "detector.fit(model, x_train, y_train) first")
        return self._fitted.score(x)

    def _fit(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """Fitted state from in-distribution data (model frozen). Default: nothing to fit."""
        return {}

    @abc.abstractmethod
    def _score(self, model: nn.Module, state: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
        """Scores ``(B,)`` of one batch, higher = more anomalous; differentiable in ``x`` when gradients are on."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def batched_features(fn: Any, x: torch.Tensor, batch_size: int) -> Any:
    """``torch.cat`` of ``fn(x[chunk])`` over chunks (tensors, or tuples/lists of tensors), without gradients."""
    parts = []
    with torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            parts.append(fn(x[s:s + batch_size]))
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return type(parts[0])(torch.cat([p[i] for p in parts]) for i in range(len(parts[0])))


__all__ = ["DEFAULT_BATCH_SIZE", "DETECTORS", "Detector", "FittedDetector", "NotFittedError", "batched_features",
           "check_count", "check_nonnegative", "check_positive", "logits_of"]
