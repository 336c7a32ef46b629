"""Training callbacks.

A callback is any object with either or both of these optional methods:

* ``on_step_end(trainer, step, out) -> None``: after every optimiser step; ``step`` is the number
  of steps done so far in the whole run (1-based), ``out`` the task's
  :class:`~fortify.train.tasks.base.TaskOutput` of that step (``loss``, ``logits``, ``metrics``).
* ``on_epoch_end(trainer, record) -> dict | None``: after every epoch, before the checkpoint is
  written. Scalar entries of the returned dict are merged into the epoch record (for instance
  PGD robust accuracy on a held-out batch). Two keys are commands, not metrics:
  ``{"rollback": True}`` restores the model, optimiser and task state of the previous epoch's
  checkpoint (the epoch counter and the LR schedule keep going, so the run still ends after
  ``epochs`` epochs) and ``{"stop": True}`` ends training after this epoch (early stopping).

:class:`Callback` is a convenience base class with no-op methods; subclassing it is optional.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

from fortify.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from fortify.train.tasks.base import TaskOutput
    from fortify.train.trainer import Trainer


class Callback:
    """No-op base class; override what you need."""

    def on_step_end(self, trainer: "Trainer", step: int, out: "TaskOutput") -> None:
        """After every optimiser step; ``step`` counts steps of the whole run (1-based)."""
        return None

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> dict[str, Any] | None:
        """After every epoch; return metrics to merge or commands (``rollback``/``stop``)."""
        return None


class RollbackOnDrop(Callback):
    """Roll back when an epoch metric falls more than ``max_drop`` below its best value so far.

    The guard against catastrophic overfitting of single-step adversarial training (Wong et al.
    2020, "Fast is better than free", Sec. 5.1): watch PGD robust accuracy on a held-out batch
    (merged into the record by an earlier callback, or computed by ``metric_fn``) and restore the
    previous epoch's weights when it collapses.

    ``metric``: record key to watch. ``metric_fn(trainer) -> float``: optional; when given, its
    value is stored in the record under ``metric`` first. ``max_drop``: tolerated absolute drop.
    """

    def __init__(
        self, metric: str, max_drop: float, metric_fn: Callable[["Trainer"], float] | None = None
    ) -> None:
        """See the class docstring."""
        if not isinstance(metric, str) or not metric:
            raise ConfigError(f"RollbackOnDrop.metric must be a non-empty record key, got {metric!r}")
        if not isinstance(max_drop, (int, float)) or isinstance(max_drop, bool) or not max_drop >= 0:
            raise ConfigError(f"RollbackOnDrop.max_drop must be a number >= 0, got {max_drop!r}")
        self.metric = metric
        self.max_drop = float(max_drop)
        self.metric_fn = metric_fn
        self.best = -math.inf
        self.rollbacks = 0

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> dict[str, Any] | None:
        """Return ``{metric: value}`` plus ``rollback=True`` when ``value < best - max_drop``."""
        out: dict[str, Any] = {}
        if self.metric_fn is not None:
            value = float(self.metric_fn(trainer))
            out[self.metric] = value
        elif self.metric in record and record[self.metric] is not None:
            value = float(record[self.metric])
        else:
            raise ConfigError(
                f"RollbackOnDrop: epoch record has no metric {self.metric!r}; "
                f"available: {', '.join(sorted(record))}"
            )
        if value < self.best - self.max_drop:
            self.rollbacks += 1
            out["rollback"] = True
        else:
            self.best = max(self.best, value)
        return out


__all__ = ["Callback", "RollbackOnDrop"]
