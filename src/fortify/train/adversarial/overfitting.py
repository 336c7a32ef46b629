"""Catastrophic-overfitting (CO) detection and recovery for single-step adversarial training.

Fast adversarial training can collapse within a few steps: FGSM accuracy soars while PGD accuracy
falls to ~0 (Wong et al. 2020, "Fast is better than free", Sec. 5.1; Andriushchenko & Flammarion
2020, "Understanding and improving fast adversarial training"). :class:`CatastrophicOverfittingGuard`
watches the PGD robust accuracy on the monitor's fixed held-out batch each epoch. It fires when

* the accuracy falls more than ``max_drop`` below its best so far (a collapse), or
* the accuracy on the training attack's own examples (``adv_acc`` in the epoch record: FGSM
  accuracy for Fast-AT) exceeds the held-out PGD-10 accuracy *at the eps trained at* by more than
  ``max_gap`` - the signature of CO (the model defeats its single-step attack but not PGD), which
  also catches runs that overfit before they were ever robust. At the nominal eps the monitor's
  measurement is reused; during an eps ramp (``ramp=True``) the guard measures PGD-10 at the
  epoch's eps (record key ``ramp_robust_acc``), so CO that starts early in the ramp - the usual
  case for FGSM-RS at linf 0.3 on MNIST - is caught while most of the budget is left.

Then the guard

1. asks the Trainer to roll back to the previous (good) epoch's checkpoint, and
2. calls ``task.on_catastrophic_overfitting(action)``: ``"lower-step"`` halves the FGSM step,
   ``"gradalign"`` switches on (or doubles) the GradAlign regulariser, ``"multi-step"`` escalates
   to a K-step PGD attack (K = 4, doubled on every later event) and ``"auto"`` is the task's
   preferred recovery (Fast-AT: the multi-step escalation; see :mod:`fortify.train.tasks.fast_at`).

The task's recovery settings survive the rollback (which restores the older task state): the guard
re-applies them through :meth:`AdversarialTask.pin_state`. Events are counted in the record as
``co_events`` and described in ``co_action``.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from fortify.errors import ConfigError
from fortify.train.adversarial.monitor import RobustnessMonitor
from fortify.train.callbacks import RollbackOnDrop

if TYPE_CHECKING:  # pragma: no cover
    from fortify.train.trainer import Trainer

ACTIONS = ("lower-step", "gradalign", "multi-step", "auto")


class CatastrophicOverfittingGuard(RollbackOnDrop):
    """Detect CO from a collapse of held-out PGD accuracy; roll back and change the attack.

    Args:
        monitor: the :class:`RobustnessMonitor` that measures ``robust_acc`` (placed before the
            guard in the callback list, or not in it at all: the guard then measures itself).
        max_drop: tolerated absolute drop of robust accuracy below its best (0.2).
        max_gap: tolerated training-attack minus held-out PGD accuracy at the trained eps (0.3; None = off).
        ramp: also apply the gap rule during an eps ramp, measuring PGD at the epoch's eps (one
            extra PGD-10 pass over the monitor batch per ramp epoch).
        action: ``"lower-step"``, ``"gradalign"`` or ``"auto"``.
        max_recoveries: after this many recoveries the guard only reports (no more rollbacks).
    """

    def __init__(self, monitor: RobustnessMonitor, max_drop: float = 0.2, action: str = "auto",
                 max_recoveries: int = 3, max_gap: float | None = 0.3, ramp: bool = True) -> None:
        if not isinstance(monitor, RobustnessMonitor):
            raise ConfigError(f"CatastrophicOverfittingGuard needs a RobustnessMonitor, got {type(monitor).__name__}")
        if action not in ACTIONS:
            raise ConfigError(f"unknown CO recovery action {action!r}; allowed: {', '.join(ACTIONS)}")
        super().__init__("robust_acc", max_drop, metric_fn=lambda tr: monitor.measure(tr)["robust_acc"])
        if max_gap is not None and (not isinstance(max_gap, (int, float)) or isinstance(max_gap, bool)
                                    or not 0 <= max_gap <= 1):
            raise ConfigError(f"max_gap must be null or a number in [0, 1], got {max_gap!r}")
        self.max_gap = None if max_gap is None else float(max_gap)
        if not isinstance(ramp, bool):
            raise ConfigError(f"ramp must be true or false, got {ramp!r}")
        self.ramp = ramp
        self.monitor = monitor
        self.action = action
        self.max_recoveries = int(max_recoveries)
        self.events: list[dict[str, Any]] = []

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> dict[str, Any] | None:
        best_before = self.best
        out = dict(super().on_epoch_end(trainer, record) or {})
        out.pop("robust_acc", None)  # the monitor reports it; keep the record single-sourced
        if "robust_acc" not in record:
            out["robust_acc"] = self.monitor.measure(trainer)["robust_acc"]
        if not out.get("rollback") and self._gap_fires(trainer, record, out):
            out["rollback"] = True
            self.rollbacks += 1
        if out.get("rollback"):
            if len(self.events) >= self.max_recoveries:
                out.pop("rollback")
                out["co_action"] = "detected (recovery budget spent)"
            else:
                hook = getattr(trainer.task, "on_catastrophic_overfitting", None)
                done = hook(self.action) if hook is not None else "rollback only"
                pin = getattr(trainer.task, "pin_state", None)
                if pin is not None:
                    pin()
                measured = self.monitor.measure(trainer)["robust_acc"]
                self.events.append({"epoch": int(record.get("epoch", 0)), "robust_acc": measured,
                                    "best": best_before if math.isfinite(best_before) else None, "action": done})
                out["co_action"] = str(done)
        out["co_events"] = len(self.events)
        return out

    def _gap_fires(self, trainer: "Trainer", record: dict[str, Any], out: dict[str, Any]) -> bool:
        """Training-attack accuracy far above held-out PGD accuracy at the eps trained at."""
        adv, eps = record.get("adv_acc"), record.get("eps")
        threat = getattr(trainer.task, "threat", None)
        if self.max_gap is None or adv is None or eps is None or threat is None or float(eps) <= 0:
            return False
        if float(eps) >= 0.99 * float(threat.eps):
            pgd = float(self.monitor.measure(trainer)["robust_acc"])
        elif self.ramp:
            pgd = self.monitor.measure_at(trainer, threat.with_eps(float(eps)))
            out["ramp_robust_acc"] = pgd
        else:
            return False
        return float(adv) - pgd > self.max_gap


__all__ = ["CatastrophicOverfittingGuard", "ACTIONS"]
