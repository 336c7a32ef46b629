"""Standard empirical-risk training: cross-entropy on clean inputs."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fortify.errors import ConfigError
from fortify.train.tasks.base import Task, TaskOutput
from fortify.train.tasks.registry import TASKS


@TASKS.register("standard", help="cross-entropy on clean inputs")
class Standard(Task):
    """Empirical risk minimisation: ``loss = CE(model(x), y)``, optionally with label smoothing
    (Szegedy et al. 2016, "Rethinking the Inception architecture", Sec. 7).

    ``label_smoothing`` in ``[0, 1)``: weight of the uniform distribution mixed into the targets.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if (not isinstance(label_smoothing, (int, float)) or isinstance(label_smoothing, bool)
                or not 0.0 <= float(label_smoothing) < 1.0):
            raise ConfigError(f"standard task: label_smoothing must lie in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator | None) -> TaskOutput:
        """``x``: ``(B, ...)`` inputs, ``y``: ``(B,)`` labels -> loss (scalar) and logits ``(B, C)``; no randomness."""
        logits = model(x)
        return TaskOutput(F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits)
