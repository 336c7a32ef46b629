"""Standard empirical-risk training: cross-entropy on clean inputs."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fortify.train.tasks.base import Task
from fortify.train.tasks.registry import TASKS


@TASKS.register("standard", help="cross-entropy on clean inputs")
class Standard(Task):
    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        logits = model(x)
        return {"loss": F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), "logits": logits}
