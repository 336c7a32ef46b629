"""The backdoor-detection protocol: ``result = detector(model, x, y=None)``.

Three levels, one result type (:class:`BackdoorDetection`):

* ``model``: is this model trojaned? ``x`` is a small clean reference set (Neural Cleanse) or only
  gives the input shape (data-free methods read no pixel of it). ``score`` is the anomaly index of the
  most suspicious class, ``flagged`` whether it passes the threshold, ``target`` that class.
* ``data``: which training samples are poisoned? ``x, y`` are the (possibly poisoned) training set;
  ``sample_flags (N,)`` marks the suspect rows, ``sample_scores (N,)`` ranks them, ``target`` is the
  class whose samples look poisoned.
* ``input``: is this input triggered? ``x`` is a clean held-out set that calibrates the threshold;
  ``scorer(x') -> (M,)`` scores new inputs (higher = more suspicious) and ``threshold`` separates them.

:meth:`BackdoorDetector.__call__` is final: it validates ``x`` (images in [0, 1], the model's dtype and
device) and ``y``, refuses a model with fewer than two classes, enters
:func:`fortify.models.state.frozen` (the user's model is never mutated; every forward hook a method
adds is removed), times the call, and returns the result.
"""
from __future__ import annotations

import abc
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import torch
from torch import nn

from fortify.audit.backdoor._ops import predict_logits
from fortify.errors import ConfigError, InputError
from fortify.models.state import frozen
from fortify.protocol import TemplateCall, template
from fortify.registry import Registry
from fortify.validation import check_device, check_images, check_labels, check_model_input

BACKDOOR_DETECTORS: Registry = Registry("backdoor detector")
Level = Literal["model", "data", "input"]
#: MAD consistency constant for normally distributed values (Neural Cleanse, Wang et al. 2019)
MAD_CONSTANT = 1.4826


@dataclass
class BackdoorDetection:
    """Outcome of one detector call (see the module docstring for the per-level meaning).

    score: the detector's statistic (higher = more suspicious); flagged: the verdict; target: the
    suspected attack label (None when nothing points to one); evidence: per-class numbers, trigger
    tensors, thresholds (JSON-ready apart from tensors); sample_scores / sample_flags: ``(N,)`` per
    row (data and input levels); scorer: ``x' (M, ...) -> (M,)`` for input-level detectors; seconds: wall
    time of the call.
    """

    detector: str
    level: str
    score: float
    flagged: bool
    target: int | None
    evidence: dict[str, Any] = field(default_factory=dict)
    sample_scores: torch.Tensor | None = None
    sample_flags: torch.Tensor | None = None
    threshold: float | None = None
    scorer: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """Plain numbers of the result (no tensors): detector, level, score, flagged, target, seconds."""
        out: dict[str, Any] = {"detector": self.detector, "level": self.level, "score": self.score,
                               "flagged": self.flagged, "target": self.target, "seconds": self.seconds}
        if self.sample_flags is not None:
            out["flagged_samples"] = int(self.sample_flags.sum())
        if self.threshold is not None:
            out["threshold"] = self.threshold
        return out


def mad_anomaly(values: torch.Tensor) -> torch.Tensor:
    """Anomaly index ``|v - median| / (1.4826 * MAD)`` per entry of ``values (K,)`` (Neural Cleanse's
    outlier test; an index above 2 is an outlier at ~95% under normality). A zero MAD gives 0 where
    ``v`` equals the median and ``inf`` elsewhere."""
    v = values.double()
    med = v.median()
    mad = (v - med).abs().median() * MAD_CONSTANT
    dev = (v - med).abs()
    if float(mad) == 0.0:
        return torch.where(dev == 0, torch.zeros_like(dev), torch.full_like(dev, math.inf))
    return dev / mad


def check_positive(value: object, name: str, *, integer: bool = False) -> Any:
    """A positive number (integer when asked): ConfigError otherwise."""
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not value > 0:  # type: ignore[operator]
        raise ConfigError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")
    return value


class BackdoorDetector(TemplateCall, abc.ABC):
    """Base class of backdoor detectors: subclasses set ``level`` and implement :meth:`_run`."""

    name: ClassVar[str] = ""
    level: ClassVar[Level] = "model"
    #: whether the detector needs labels ``y`` (data-level methods group rows by label)
    needs_labels: ClassVar[bool] = False
    #: the fewest classes the method can judge (an outlier test across classes needs at least 3)
    min_classes: ClassVar[int] = 2

    def __init__(self, seed: int = 0, batch_size: int = 256) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
        self.seed = seed
        self.batch_size = int(check_positive(batch_size, "batch_size", integer=True))

    @template
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> BackdoorDetection:
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        xt = check_images(x, name="x").detach()
        if xt.dim() != 4:
            raise InputError(f"backdoor detectors take images (N, C, H, W), got shape {tuple(xt.shape)}")
        check_device(model, xt, name="x")
        check_model_input(model, xt, name="x")
        start = time.perf_counter()
        with frozen(model):
            classes = int(predict_logits(model, xt[:1]).shape[1])
            if classes < self.min_classes:
                raise InputError(f"{self.name or type(self).__name__} needs a classifier with at least "
                                 f"{self.min_classes} classes, the model has {classes}")
            yt = None
            if y is not None:
                yt = check_labels(y, xt.shape[0], classes, name="y").to(xt.device)
            elif self.needs_labels:
                raise InputError(f"{self.name or type(self).__name__} needs the labels y of the data it screens")
            res = self._run(model, xt, yt, classes)
        res.detector, res.level = self.name or type(self).__name__, self.level
        res.seconds = time.perf_counter() - start
        return res

    @abc.abstractmethod
    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, classes: int) -> BackdoorDetection:
        """Detect on validated ``x (N, C, H, W)`` (labels ``y (N,)`` or None) with the model frozen."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def create_detector(name: str, **options: Any) -> BackdoorDetector:
    """The backdoor detector registered as ``name`` with its options."""
    det: BackdoorDetector = BACKDOOR_DETECTORS.create(name, **options)
    return det


__all__ = ["BACKDOOR_DETECTORS", "BackdoorDetection", "BackdoorDetector", "MAD_CONSTANT", "check_positive",
           "create_detector", "mad_anomaly"]
