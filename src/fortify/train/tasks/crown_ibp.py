"""CROWN-IBP certified training (Zhang et al. 2020, "Towards stable and efficient training of
verifiably robust neural networks").

The margin lower bound mixes a CROWN-IBP bound (IBP pre-activation bounds, one CROWN backward
pass from the margin specification) with the plain IBP bound:
``m = beta * m_crown_ibp + (1 - beta) * m_ibp``, ``beta`` going linearly from ``beta_start`` (1)
to ``beta_end`` (0) along the same ramp as eps (Zhang et al.'s schedule); ``kappa`` defaults to
1 -> 0. Loss: ``kappa * CE(f(x), y) + (1 - kappa) * CE(-m, y)``. Shapes as in :mod:`.ibp`.
Cost: one CROWN backward pass of ``K`` rows per batch while ``beta > 0``.
"""
from __future__ import annotations

import torch
from torch import nn

from fortify.certify.propagation import margin_lower_bound
from fortify.train.tasks.ibp import CertifiedTask, _fraction
from fortify.train.tasks.registry import TASKS


@TASKS.register("crown_ibp", help="CROWN-IBP certified training with beta schedule (Zhang et al. 2020)")
class CROWNIBPTask(CertifiedTask):
    """CROWN-IBP. Args as :class:`fortify.train.tasks.ibp.IBPTask` plus ``beta_start``/``beta_end``."""

    def __init__(self, threat: object = "linf:0.1", warmup: float = 0.0, ramp_end: float = 0.5,
                 kappa_start: float = 1.0, kappa_end: float = 0.0, beta_start: float = 1.0,
                 beta_end: float = 0.0, schedule: str = "linear") -> None:
        super().__init__(threat, warmup, ramp_end, kappa_start, kappa_end, schedule)
        self.beta_start = _fraction(beta_start, "beta_start")
        self.beta_end = _fraction(beta_end, "beta_end")

    def beta_now(self) -> float:
        return self.beta_start + self.ramp() * (self.beta_end - self.beta_start)

    def bounds(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        beta = self.beta_now()
        ibp = margin_lower_bound(model, x, y, self.threat, "ibp", eps=eps)
        if beta <= 0:
            return ibp
        crown = margin_lower_bound(model, x, y, self.threat, "crown-ibp", eps=eps, intersect_ibp=False)
        return beta * crown + (1 - beta) * ibp
