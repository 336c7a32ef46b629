"""The certifier protocol: ``cert = certifier(model, x, y, threat)``.

* ``model``: an ``nn.Module`` mapping inputs ``(N, ...)`` in ``threat.bounds`` to logits ``(N, K)``;
  never mutated (eval mode and frozen parameters for the call, every flag restored afterwards).
* ``x (N, ...)`` inputs, ``y (N,)`` int labels, ``threat`` a :class:`fortify.ThreatModel`.
* returns :class:`Certificate`: ``lower_margin (N,)`` is a sound lower bound of
  ``min_{x' in threat set} min_{j != y} (z_y(x') - z_j(x'))``; ``certified = lower_margin > 0``
  (for randomized smoothing, whose guarantee is about the smoothed classifier, see smoothing.py).

:class:`Certifier` is a template: ``__call__`` validates (:func:`fortify.validation.check_batch`, the
checks every entry point shares) and freezes the model, subclasses write
``_run`` on a batch chunk.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from fortify.models.state import frozen
from fortify.protocol import TemplateCall, template
from fortify.errors import ThreatModelError
from fortify.registry import Registry
from fortify.threat import ThreatModel
from fortify.validation import check_batch

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


class Certifier(TemplateCall, abc.ABC):
    """Base class of certifiers: subclasses set ``name``/``norms`` and implement ``_run``."""

    name: ClassVar[str] = ""
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2", "l1")

    @template
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> Certificate:
        threat = check_threat(threat)
        if threat.norm not in self.norms:
            raise ThreatModelError(
                f"{self.name} does not support norm {threat.norm!r}; supported: {', '.join(self.norms)}"
            )
        x, y, _ = check_batch(model, x, y, threat.bounds)
        x = x.detach()
        with frozen(model), torch.no_grad():
            return self._run(model, x, y, threat)

    @abc.abstractmethod
    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> Certificate:
        """Certify a validated batch ``x (N, ...)``, ``y (N,)`` with the model in eval mode."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
