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
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Task:
    """Base class for training objectives. Subclasses implement :meth:`__call__`."""

    name: str = ""

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
