"""Catastrophic-overfitting (CO) detection and recovery for single-step adversarial training.

Fast adversarial training can collapse within a few steps: FGSM accuracy soars while PGD accuracy
falls to ~0 (Wong et al. 2020, "Fast is better than free", Sec. 5.1; Andriushchenko & Flammarion
2020, "Understanding and improving fast adversarial training"). :class:`CatastrophicOverfittingGuard`
watches the PGD robust accuracy on the monitor's fixed held-out batch each epoch; when it falls
more than ``max_drop`` below its best so far, the guard

1. asks the Trainer to roll back to the previous (good) epoch's checkpoint, and
2. calls ``task.on_catastrophic_overfitting(action)``: ``"lower-step"`` halves the FGSM step,
   ``"gradalign"`` switches on (or doubles) the GradAlign regulariser, ``"auto"`` lowers the step
   the first time and adds GradAlign after that.

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

ACTIONS = ("lower-step", "gradalign", "auto")


class CatastrophicOverfittingGuard(RollbackOnDrop):
    """Detect CO from a collapse of held-out PGD accuracy; roll back and change the attack.

    Args:
        monitor: the :class:`RobustnessMonitor` that measures ``robust_acc`` (placed before the
            guard in the callback list, or not in it at all: the guard then measures itself).
        max_drop: tolerated absolute drop of robust accuracy below its best (0.2).
        action: ``"lower-step"``, ``"gradalign"`` or ``"auto"``.
        max_recoveries: after this many recoveries the guard only reports (no more rollbacks).
    """

    def __init__(self, monitor: RobustnessMonitor, max_drop: float = 0.2, action: str = "auto",
                 max_recoveries: int = 3) -> None:
        if not isinstance(monitor, RobustnessMonitor):
            raise ConfigError(f"CatastrophicOverfittingGuard needs a RobustnessMonitor, got {type(monitor).__name__}")
        if action not in ACTIONS:
            raise ConfigError(f"unknown CO recovery action {action!r}; allowed: {', '.join(ACTIONS)}")
        super().__init__("robust_acc", max_drop, metric_fn=lambda tr: monitor.measure(tr)["robust_acc"])
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


__all__ = ["CatastrophicOverfittingGuard", "ACTIONS"]
