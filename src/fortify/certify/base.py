"""The certifier protocol: ``cert = certifier(model, x, y, threat)``.

* ``model``: an ``nn.Module`` mapping inputs ``(N, ...)`` in ``threat.bounds`` to logits ``(N, K)``;
  never mutated (eval mode and frozen parameters for the call, every flag restored afterwards).
* ``x (N, ...)`` inputs, ``y (N,)`` int labels, ``threat`` a :class:`fortify.ThreatModel`.
* returns :class:`Certificate`: ``lower_margin (N,)`` is a sound lower bound of
  ``min_{x' in threat set} min_{j != y} (z_y(x') - z_j(x'))``; ``certified = lower_margin > 0``
  (for randomized smoothing, whose guarantee is about the smoothed classifier, see smoothing.py).

:class:`Certifier` is a template: ``__call__`` validates and freezes the model, subclasses write
``_certify`` on a batch chunk.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from fortify.attacks.base import frozen_eval, model_device
from fortify.errors import InputError, ThreatModelError
from fortify.registry import Registry
from fortify.threat import ThreatModel
from fortify.validation import check_images, check_labels, check_logits

CERTIFIERS: Registry = Registry("certifier")


@dataclass
class Certificate:
    """Result of a certifier on ``N`` points.

    lower_margin: ``(N,)`` float, sound lower bound of the worst-case margin ``z_y - max_{j!=y} z_j``
        over the threat set (smoothing: ``radius - eps`` in input-norm units, ``-inf`` on abstain).
    certified: ``(N,)`` bool, the point is provably robust (and correctly classified).
    method: name of the certifier.
    radius: ``(N,)`` certified radius where the method gives one (smoothing), else ``None``.
    status: per-point strings where the method has more than two outcomes (milp: ``verified``,
        ``counterexample``, ``timeout``, ``inconclusive``), else ``None``.
    extra: method-specific tensors (counterexamples, p_lower, predictions, ...).
    """

    lower_margin: torch.Tensor
    certified: torch.Tensor
    method: str
    radius: torch.Tensor | None = None
    status: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def certified_accuracy(self) -> float:
        return float(self.certified.float().mean()) if self.certified.numel() else 0.0

    def __len__(self) -> int:
        return int(self.certified.shape[0])


def check_threat(threat: object) -> ThreatModel:
    if not isinstance(threat, ThreatModel):
        raise ThreatModelError(f"threat must be a fortify.ThreatModel, got {type(threat).__name__}")
    return threat


class Certifier(abc.ABC):
    """Base class of certifiers: subclasses set ``name``/``norms`` and implement ``_certify``."""

    name: ClassVar[str] = ""
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2", "l1")

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> Certificate:
        threat = check_threat(threat)
        if threat.norm not in self.norms:
            raise ThreatModelError(f"{self.name} does not support norm {threat.norm!r}; supported: {', '.join(self.norms)}")
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_images(x, threat.bounds)
        dev = model_device(model)
        if dev is not None and x.device != dev:
            raise InputError(f"x is on {x.device} but the model is on {dev}; fortify never moves the model")
        x = x.detach()
        with frozen_eval(model), torch.no_grad():
            logits = check_logits(model(x[:1]), 1)
            y = check_labels(y, x.shape[0], logits.shape[1]).to(x.device)
            return self._certify(model, x, y, threat)

    @abc.abstractmethod
    def _certify(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> Certificate:
        """Certify a validated batch ``x (N, ...)``, ``y (N,)`` with the model in eval mode."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
