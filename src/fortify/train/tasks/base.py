"""The Task protocol: one training objective per class.

``out = task(model, x, y)`` returns a dict with at least ``loss`` (a scalar tensor to minimise,
with graph) and ``logits`` (``(B, C)`` on the inputs the loss was computed on, detached or not),
plus any extra scalar metrics (floats or 0-d tensors) to log. The :class:`fortify.train.Trainer`
owns the loop, optimiser, schedule, checkpoints, progress and logging; a new training method is
one new Task registered in :data:`fortify.train.tasks.TASKS`.

Tasks that change with training (eps ramps, growing attack steps) read ``self.progress`` in
``[0, 1]``, the fraction of training done, which the Trainer sets through :meth:`set_progress`
before every step. Tasks that keep extra state (e.g. replay buffers) expose it with
``state_dict`` / ``load_state_dict`` so resume stays exact.

Validation: every subclass's ``__call__`` is wrapped (once, by :meth:`Task.__init_subclass__`) so
that it first runs :meth:`Task.validate`, the checks every fortify entry point shares
(:func:`fortify.validation.check_batch`): ``x`` floating with the model's dtype and declared sample
shape, finite, inside :attr:`Task.input_bounds` (the threat model's box for tasks with one,
unbounded otherwise); ``y`` integer ``(N,)`` below the model's class count. The class count comes
from a one-sample eval-mode probe, done once per model and sample shape (flags and RNG restored).
Nested task calls (a task calling another task) are validated once, at the outermost call.
"""
from __future__ import annotations

import functools
import math
import threading
from typing import Any, Callable

import torch
from torch import nn

from fortify.threat import ThreatModel
from fortify.validation import check_batch

_NESTING = threading.local()
TaskCall = Callable[..., dict[str, Any]]


def _validating(call: TaskCall) -> TaskCall:
    """Wrap a task's ``__call__`` so it validates ``(model, x, y)`` first (outermost call only)."""

    @functools.wraps(call)
    def __call__(self: "Task", model: nn.Module, x: torch.Tensor, y: torch.Tensor, *args: Any,
                 **kwargs: Any) -> dict[str, Any]:
        if getattr(_NESTING, "depth", 0):
            return call(self, model, x, y, *args, **kwargs)
        x, y = self.validate(model, x, y)
        _NESTING.depth = 1
        try:
            return call(self, model, x, y, *args, **kwargs)
        finally:
            _NESTING.depth = 0

    __call__.fortify_validating = True  # type: ignore[attr-defined]
    return __call__


class Task:
    """Base class for training objectives. Subclasses implement :meth:`__call__`."""

    name: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        call = cls.__dict__.get("__call__")
        if call is not None and not getattr(call, "fortify_validating", False):
            cls.__call__ = _validating(call)  # type: ignore[method-assign]

    @property
    def input_bounds(self) -> tuple[float, float]:
        """The box inputs must lie in: the (intersected) bounds of the task's threat model(s)
        (``self.threat`` / ``self.threats``), or ``(-inf, inf)`` for a task without one."""
        threats = [getattr(self, "threat", None), *(getattr(self, "threats", None) or ())]
        boxes = [t.bounds for t in threats if isinstance(t, ThreatModel)]
        if not boxes:
            return (-math.inf, math.inf)
        return (max(b[0] for b in boxes), min(b[1] for b in boxes))

    def validate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared checks (typed errors, model untouched); returns ``(x, y as int64)``."""
        x, y, _ = check_batch(model, x, y, self.input_bounds, cache=True)
        return x, y

    def __init__(self) -> None:
        self.progress = 0.0
        self.epoch = 0

    def set_progress(self, progress: float, epoch: int) -> None:
        """Called by the Trainer before each step with the fraction of training done."""
        self.progress = float(progress)
        self.epoch = int(epoch)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k not in ("progress", "epoch"))
        return f"{type(self).__name__}({fields})"
