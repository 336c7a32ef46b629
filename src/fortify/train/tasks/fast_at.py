"""Fast adversarial training (Wong, Rice & Kolter 2020, "Fast is better than free: revisiting
adversarial training"): one FGSM step of size ``alpha = 1.25 eps`` from a uniform random start,
projected, then a training step on the result - about K times cheaper than PGD-K training.

Fast-AT can suffer *catastrophic overfitting* (CO): PGD accuracy collapses within an epoch while
FGSM accuracy soars. Detection lives in :class:`fortify.train.adversarial.CatastrophicOverfittingGuard`
(PGD accuracy on a fixed held-out batch each epoch); on CO it rolls back and calls
:meth:`FastAT.on_catastrophic_overfitting`, which strengthens the training attack:

* ``"lower-step"``: halve the FGSM step;
* ``"gradalign"``: switch on GradAlign (Andriushchenko & Flammarion 2020, "Understanding and
  improving fast adversarial training") at ``grad_align_on_co`` (or double it);
* ``"multi-step"`` and ``"auto"`` (default): escalate for the rest of the run to a ``co_steps``-step
  PGD attack (default 4, step ``2.5 eps / K``, Madry et al. 2018), doubling ``K`` on every later
  event; GradAlign is switched off then (a multi-step attack needs no alignment term).

Why the ladder starts with a 4-step attack (measured on mnist-5k, linf 0.3, 15 epochs, standard
preset; benchmarks/training.py): unguarded FGSM-RS ends at 2.2% robust accuracy; the guard with a
2-step escalation (step eps) reaches 53% held-out PGD-10 but only 13.6% under the standard preset
(a gradient-masked model); with GradAlign at lambda 2 the gap rule fired again after one epoch,
at 3x the cost of an FGSM epoch; the 4-step escalation ends at 57.8% (68% held-out PGD-10).

The strength in force is recorded in every step's output and hence in every epoch record:
``steps`` (attack steps), ``step_ratio`` (step / eps) and ``ga_lambda`` (GradAlign weight).

Shapes: ``x (B, ...)``, ``y (B,)``; ``logits (B, C)`` of the adversarial inputs.
Cost: ``K B`` input-gradient evaluations per step (``K = 1`` until escalated; + ``2 B`` while
GradAlign is on).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fortify.errors import ConfigError
from fortify.train.adversarial.base import AdversarialTask, positive
from fortify.train.adversarial.inner import ce_per_sample, check_steps
from fortify.train.adversarial.penalties import grad_align
from fortify.train.tasks.base import TaskOutput
from fortify.train.tasks.registry import TASKS

CO_ACTIONS = ("lower-step", "gradalign", "multi-step", "auto")
#: per-step size of the escalated K-step attack, as a fraction of eps: ``2.5 / K`` (Madry et al. 2018)
ESCALATED_STEP = 2.5


@TASKS.register("fast_at", help="FGSM with random init (Wong et al. 2020), CO recovery by multi-step / GradAlign")
class FastAT(AdversarialTask):
    """Fast-AT.

    Args:
        threat: threat model, e.g. ``"linf:0.3"``.
        step_ratio: FGSM step as a fraction of eps (1.25 in Wong et al.).
        random_start: uniform start in the eps ball (False gives plain FGSM training, prone to CO).
        grad_align: GradAlign weight ``lambda`` (0 = off).
        grad_align_on_co: weight used when the CO guard switches GradAlign on (action
            ``"gradalign"``). Andriushchenko & Flammarion use 0.2 at CIFAR-10 eps 8/255 and grow it
            with eps; 2.0 is the default for linf 0.3 on MNIST.
        co_steps: attack steps of the first ``"multi-step"`` / ``"auto"`` escalation (>= 2; 4).
        schedule: adaptive-strength schedule (an eps ramp is the usual companion).
    """

    PINNABLE = AdversarialTask.PINNABLE + ("attack_steps",)

    def __init__(self, threat: object = "linf:0.3", step_ratio: float = 1.25, random_start: bool = True,
                 grad_align: float = 0.0, grad_align_on_co: float = 2.0, co_steps: int = 4, schedule: object = None,
                 monitor: object = True, co_guard: object = True) -> None:
        super().__init__(threat, 1, step_ratio, schedule, monitor=monitor, co_guard=co_guard)
        self.random_start = bool(random_start)
        self.grad_align = positive(grad_align, "grad_align", allow_zero=True)
        self.grad_align_on_co = positive(grad_align_on_co, "grad_align_on_co")
        self.co_steps = check_steps(co_steps, "co_steps")
        if self.co_steps < 2:
            raise ConfigError(f"co_steps must be an integer >= 2, got {co_steps!r}")
        self.attack_steps = 1
        self.co_events = 0

    def current_steps(self) -> int:
        return self.attack_steps

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator | None) -> TaskOutput:
        x_adv, evals = self.attack(model, x, ce_per_sample(y), steps=self.attack_steps,
                                   random_start=self.random_start, generator=generator)
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        extra: dict[str, float | torch.Tensor] = {"step_ratio": float(self.step_ratio or 1.25), "ga_lambda": self.grad_align}
        if self.grad_align > 0:
            reg = grad_align(model, x, y, self.current_threat().eps, generator)
            loss = loss + self.grad_align * reg
            evals += 2 * x.shape[0]
            extra["grad_align"] = float(reg.detach())
        return self.output(loss, logits, y, evals, **extra)

    def on_catastrophic_overfitting(self, action: str) -> str:
        """Strengthen the training attack (see the module docstring); returns what was done."""
        if action not in CO_ACTIONS:
            raise ConfigError(f"unknown CO recovery action {action!r}; allowed: {', '.join(CO_ACTIONS)}")
        self.co_events += 1
        ratio = float(self.step_ratio or 1.25)
        if action == "lower-step":
            self.step_ratio = 0.5 * ratio
            return f"step_ratio -> {self.step_ratio:.3g}"
        if action == "gradalign":
            self.grad_align = self.grad_align_on_co if self.grad_align == 0 else 2 * self.grad_align
            return f"grad_align -> {self.grad_align:.3g}"
        self.attack_steps = self.co_steps if self.attack_steps == 1 else 2 * self.attack_steps
        self.step_ratio = ESCALATED_STEP / self.attack_steps
        self.grad_align = 0.0  # a multi-step attack needs no alignment term (and it triples the cost)
        return f"attack_steps -> {self.attack_steps} (step {self.step_ratio:.3g} eps), grad_align off"

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "grad_align": self.grad_align, "co_events": self.co_events,
                "attack_steps": self.attack_steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.grad_align = float(state.get("grad_align", self.grad_align))
        self.co_events = int(state.get("co_events", self.co_events))
        self.attack_steps = int(state.get("attack_steps", self.attack_steps))
        self._apply_pins()
