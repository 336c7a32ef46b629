"""Fast adversarial training (Wong, Rice & Kolter 2020, "Fast is better than free: revisiting
adversarial training"): one FGSM step of size ``alpha = 1.25 eps`` from a uniform random start,
projected, then a training step on the result - about K times cheaper than PGD-K training.

Fast-AT can suffer *catastrophic overfitting* (CO): PGD accuracy collapses within an epoch while
FGSM accuracy soars. Detection and recovery live in
:class:`fortify.train.adversarial.CatastrophicOverfittingGuard` (PGD accuracy on a fixed held-out
batch each epoch; on a collapse it rolls back and calls :meth:`FastAT.on_catastrophic_overfitting`,
which lowers the step or switches on the GradAlign regulariser of Andriushchenko & Flammarion
2020, or both in turn with ``action="auto"``).

Shapes: ``x (B, ...)``, ``y (B,)``; ``logits (B, C)`` of the adversarial inputs.
Cost: ``B`` input-gradient evaluations per step (+ ``2 B`` while GradAlign is on).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fortify.errors import ConfigError
from fortify.train.adversarial.base import AdversarialTask, positive
from fortify.train.adversarial.inner import ce_per_sample
from fortify.train.adversarial.penalties import grad_align
from fortify.train.tasks.registry import TASKS

CO_ACTIONS = ("lower-step", "gradalign", "auto")


@TASKS.register("fast_at", help="FGSM with random init (Wong et al. 2020), GradAlign on demand")
class FastAT(AdversarialTask):
    """Fast-AT.

    Args:
        threat: threat model, e.g. ``"linf:0.3"``.
        step_ratio: FGSM step as a fraction of eps (1.25 in Wong et al.).
        random_start: uniform start in the eps ball (False gives plain FGSM training, prone to CO).
        grad_align: GradAlign weight ``lambda`` (0 = off).
        grad_align_on_co: weight used when the CO guard switches GradAlign on.
        schedule: adaptive-strength schedule (an eps ramp is the usual companion).
    """

    name = "fast_at"

    def __init__(self, threat: object = "linf:0.3", step_ratio: float = 1.25, random_start: bool = True,
                 grad_align: float = 0.0, grad_align_on_co: float = 0.5, schedule: object = None,
                 monitor: object = True, co_guard: object = True) -> None:
        super().__init__(threat, 1, step_ratio, schedule, monitor=monitor, co_guard=co_guard)
        self.random_start = bool(random_start)
        self.grad_align = positive(grad_align, "grad_align", allow_zero=True)
        self.grad_align_on_co = positive(grad_align_on_co, "grad_align_on_co")
        self.co_events = 0

    def current_steps(self) -> int:
        return 1

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        x_adv, evals = self.attack(model, x, ce_per_sample(y), steps=1, random_start=self.random_start)
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        extra: dict[str, Any] = {}
        if self.grad_align > 0:
            reg = grad_align(model, x, y, self.current_threat().eps, self.generator)
            loss = loss + self.grad_align * reg
            evals += 2 * x.shape[0]
            extra["grad_align"] = float(reg.detach())
        return self.output(loss, logits, y, evals, **extra)

    def on_catastrophic_overfitting(self, action: str) -> str:
        if action not in CO_ACTIONS:
            raise ConfigError(f"unknown CO recovery action {action!r}; allowed: {', '.join(CO_ACTIONS)}")
        self.co_events += 1
        if action == "lower-step" or (action == "auto" and self.co_events == 1):
            self.step_ratio = 0.5 * float(self.step_ratio or 1.25)
            return f"step_ratio -> {self.step_ratio:.3g}"
        self.grad_align = self.grad_align_on_co if self.grad_align == 0 else 2 * self.grad_align
        return f"grad_align -> {self.grad_align:.3g}"

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "grad_align": self.grad_align, "co_events": self.co_events}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.grad_align = float(state.get("grad_align", self.grad_align))
        self.co_events = int(state.get("co_events", self.co_events))
        self._apply_pins()
