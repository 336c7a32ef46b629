"""Certified training with interval bound propagation (Gowal et al. 2018, "On the effectiveness of
interval bound propagation for training verifiably robust models").

Loss: ``kappa * CE(f(x), y) + (1 - kappa) * CE(-m(x, eps_t), y)`` where ``m (B, K)`` holds the
IBP lower bounds of ``z_y - z_j`` (0 at ``j = y``), so ``-m`` are worst-case logits
(:func:`fortify.certify.robust_logits`). Schedule, from the Trainer's ``progress`` p in [0, 1]:
``r = clamp((p - warmup) / (ramp_end - warmup), 0, 1)``, ``eps_t = s(r) * eps``,
``kappa_t = kappa_start + r * (kappa_end - kappa_start)`` (Gowal et al.: eps ramps up from 0,
kappa from 1 to 0.5). ``schedule="linear"``: ``s(r) = r``; ``schedule="smoothed"`` (the
SmoothedScheduler of Shi et al. 2021 / auto_LiRPA, mid point 0.25, exponent 4): ``s(r) = a (r/0.25)^4``
up to ``r = 0.25``, then linear to 1, with ``a = 0.25 / (4 * 0.75 + 0.25)`` so that value and slope
are continuous - eps grows slowly while the bounds are still loose. Shapes: ``x (B, ...)``,
``y (B,)``; ``logits (B, K)`` are the clean logits.
Metrics: ``eps``, ``kappa``, ``robust_loss``, ``verified`` (fraction with all bounds > 0 at eps_t).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fortify.certify.propagation import margin_lower_bound, robust_logits
from fortify.errors import ConfigError
from fortify.threat import ThreatModel
from fortify.train.tasks.base import Task, TaskOutput
from fortify.train.tasks.registry import TASKS


def as_threat(threat: object) -> ThreatModel:
    """Accept a ThreatModel, a ``"norm:eps"`` string or a mapping: :meth:`ThreatModel.coerce`."""
    return ThreatModel.coerce(threat)


def _fraction(v: object, name: str) -> float:
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in [0, 1], got {v!r}") from None
    if not 0.0 <= f <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1], got {v!r}")
    return f


EPS_SCHEDULES = ("linear", "smoothed")
SMOOTH_MID, SMOOTH_EXP = 0.25, 4.0


def eps_fraction(r: float, schedule: str = "linear") -> float:
    """Fraction of the final eps at ramp position ``r`` in [0, 1] (see the module docstring)."""
    if schedule == "linear" or r >= 1.0:
        return r
    a = SMOOTH_MID / (SMOOTH_EXP * (1 - SMOOTH_MID) + SMOOTH_MID)
    if r <= SMOOTH_MID:
        return a * (r / SMOOTH_MID) ** SMOOTH_EXP
    return a + (1 - a) * (r - SMOOTH_MID) / (1 - SMOOTH_MID)


class CertifiedTask(Task):
    """Shared schedule of certified-training tasks (eps ramp and kappa mix)."""

    bound_method = "ibp"

    def __init__(self, threat: object = "linf:0.1", warmup: float = 0.0, ramp_end: float = 0.5,
                 kappa_start: float = 1.0, kappa_end: float = 0.5, schedule: str = "linear") -> None:
        super().__init__()
        if schedule not in EPS_SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(EPS_SCHEDULES)}; got {schedule!r}")
        self.schedule = schedule
        self.threat = as_threat(threat)
        self.warmup = _fraction(warmup, "warmup")
        self.ramp_end = _fraction(ramp_end, "ramp_end")
        if self.ramp_end < self.warmup:
            raise ConfigError(f"ramp_end ({ramp_end}) must be >= warmup ({warmup})")
        self.kappa_start = _fraction(kappa_start, "kappa_start")
        self.kappa_end = _fraction(kappa_end, "kappa_end")

    def ramp(self) -> float:
        """Ramp position r in [0, 1] at the current progress."""
        if self.ramp_end <= self.warmup:
            return 1.0 if self.progress >= self.warmup else 0.0
        return min(1.0, max(0.0, (self.progress - self.warmup) / (self.ramp_end - self.warmup)))

    def eps_now(self) -> float:
        return eps_fraction(self.ramp(), self.schedule) * self.threat.eps

    def kappa_now(self) -> float:
        return self.kappa_start + self.ramp() * (self.kappa_end - self.kappa_start)

    def bounds(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """``(B, K)`` margin lower bounds used by the robust loss."""
        return margin_lower_bound(model, x, y, self.threat, "ibp", eps=eps)

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator | None) -> TaskOutput:
        logits = model(x)
        clean = F.cross_entropy(logits, y)
        eps, kappa = self.eps_now(), self.kappa_now()
        metrics: dict[str, float | torch.Tensor] = {"eps": eps, "kappa": kappa}
        if kappa >= 1.0:
            return TaskOutput(clean, logits, metrics)
        low = self.bounds(model, x, y, eps)
        robust = F.cross_entropy(robust_logits(low), y)
        verified = (low.scatter(1, y[:, None], float("inf")).amin(dim=1) > 0).float().mean()
        metrics.update(robust_loss=robust.detach(), verified=verified)
        return TaskOutput(kappa * clean + (1 - kappa) * robust, logits, metrics)


@TASKS.register("ibp", help="IBP certified training with eps ramp and kappa mix (Gowal et al. 2018)")
class IBPTask(CertifiedTask):
    """IBP certified training. Args: ``threat``, ``warmup``/``ramp_end`` (fractions of training),
    ``kappa_start``/``kappa_end`` (clean-loss weight), ``schedule`` (eps ramp shape)."""

