"""The Task protocol (template method): one training objective per class.

``out = task(model, x, y, *, generator=None)`` returns a :class:`TaskOutput`: ``loss`` (a scalar
tensor to minimise, with graph), ``logits`` (``(B, C)`` on the inputs the loss was computed on, or
a multiple of ``B`` rows for augmented copies; detached or not) and ``metrics`` (extra scalars,
floats or 0-d tensors, to log; ``grad_evals`` counts the task's input-gradient evaluations). The
:class:`fortify.train.Trainer` owns the loop, optimiser, schedule, checkpoints, progress and
logging, and passes its ``torch.Generator`` on every call; a new training method is one new Task
registered in :data:`fortify.train.tasks.TASKS`.

:meth:`Task.__call__` is final, the template method of :mod:`fortify.protocol` (a subclass defining
``__call__`` is a TypeError at class creation): it validates the batch with :meth:`Task.validate`, the checks every fortify entry point
shares (:func:`fortify.validation.check_batch`): ``x`` floating with the model's dtype and declared
sample shape, finite, inside :attr:`Task.input_bounds` (the threat model's box for tasks with one,
unbounded otherwise); ``y`` integer ``(N,)`` below the model's class count (the class count comes
from a one-sample eval-mode probe, done once per model and sample shape, flags and RNG restored).
It then calls the subclass' :meth:`Task._run` and checks that it returned a :class:`TaskOutput`.
Nested task calls (a task calling another task) are validated once, at the outermost call. The
model's flags are the caller's: the Trainer runs tasks under
:func:`fortify.models.state.train_mode`; a task that needs eval mode for a part of its work (an
inner attack, a clean reference) enters :mod:`fortify.models.state` itself.

Randomness: tasks draw every random number from the ``generator`` argument (passed down to helpers
and, for the duration of the call, to noise modules), so equal generator states give equal losses
and a resumed run is bit-identical. ``generator=None`` falls back to torch's global RNG.

Tasks that change with training (eps ramps, growing attack steps) read ``self.progress`` in
``[0, 1]``, the fraction of training done, which the Trainer sets through :meth:`set_progress`
before every step. Tasks that keep extra state (e.g. replay buffers) expose it with
``state_dict`` / ``load_state_dict`` so resume stays exact.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any, final

import torch
from torch import nn

from fortify.errors import InputError
from fortify.protocol import TemplateCall, template
from fortify.threat import ThreatModel
from fortify.validation import check_batch

_NESTING = threading.local()


@dataclass
class TaskOutput:
    """Result of one task call.

    loss: scalar tensor to minimise (with a graph to the parameters under grad mode).
    logits: ``(R, C)`` logits of the inputs the loss saw; ``R`` is ``B`` or a multiple of it
        (augmented copies, rows ordered copy-major like ``y.repeat(R // B)``).
    metrics: extra scalars to log, ``{name: float | 0-d tensor}``; ``grad_evals`` (int) counts the
        task's per-sample input-gradient evaluations and is added to the Trainer's cost count.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    metrics: dict[str, float | torch.Tensor] = field(default_factory=dict)

    @property
    def grad_evals(self) -> int:
        """The task's reported input-gradient evaluations (``metrics["grad_evals"]``, 0 if absent)."""
        ge = self.metrics.get("grad_evals", 0)
        return int(ge.item() if isinstance(ge, torch.Tensor) else ge)


class Task(TemplateCall):
    """Base class for training objectives. Subclasses implement :meth:`_run`, never ``__call__``
    (:class:`fortify.protocol.TemplateCall` makes defining it a TypeError at class creation)."""

    name: str = ""

    @property
    def input_bounds(self) -> tuple[float, float]:
        """The box inputs must lie in: the (intersected) bounds of the task's threat model(s)
        (``self.threat`` / ``self.threats``), or ``(-inf, inf)`` for a task without one."""
        threats = [getattr(self, "threat", None), *(getattr(self, "threats", None) or ())]
        boxes = [t.envelope() for t in threats if isinstance(t, ThreatModel)]
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

    @final
    @template
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 generator: torch.Generator | None = None) -> TaskOutput:
        """Validate ``x (B, ...)``, ``y (B,)`` (outermost call only), run :meth:`_run` and return its
        :class:`TaskOutput`. ``generator``: the source of every random number the task draws."""
        if generator is not None and not isinstance(generator, torch.Generator):
            raise InputError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if getattr(_NESTING, "depth", 0):
            return self._checked(self._run(model, x, y, generator))
        x, y = self.validate(model, x, y)
        _NESTING.depth = 1
        try:
            return self._checked(self._run(model, x, y, generator))
        finally:
            _NESTING.depth = 0

    def _checked(self, out: object) -> TaskOutput:
        """``out`` if it is a TaskOutput; TypeError naming the task otherwise (a bug in the task)."""
        if not isinstance(out, TaskOutput):
            raise TypeError(f"{type(self).__name__}._run must return a TaskOutput, got {type(out).__name__}")
        return out

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator | None) -> TaskOutput:
        """The objective on a validated batch ``x (B, ...)``, ``y (B,)`` int64: loss, logits
        ``(B, C)`` and metrics. Draw every random number from ``generator`` (None: the global RNG)."""
        raise NotImplementedError(f"{type(self).__name__} implements no _run")

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k not in ("progress", "epoch"))
        return f"{type(self).__name__}({fields})"
