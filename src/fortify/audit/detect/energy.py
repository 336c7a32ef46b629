"""Energy score (Liu et al. 2020, "Energy-based out-of-distribution detection"): ``E(x) = -T logsumexp(z / T)``;
higher energy is anomalous. Shapes ``x (N, *sample) -> (N,)``; cost: one forward pass. Nothing to fit."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fortify.audit.detect.base import DEFAULT_BATCH_SIZE, DETECTORS, Detector, check_positive, logits_of


def energy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``-T logsumexp(z / T)`` per row: ``(N, C) -> (N,)``."""
    return -temperature * torch.logsumexp(logits / temperature, dim=1)


@DETECTORS.register("energy", help="free energy -T logsumexp(z/T) (Liu et al. 2020)")
class Energy(Detector):
    """Free energy of the logits at temperature ``temperature`` (1 in the paper)."""

    def __init__(self, temperature: float = 1.0, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(batch_size)
        self.temperature = check_positive(temperature, "temperature")

    def _score(self, model: nn.Module, state: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
        return energy(logits_of(model, x), self.temperature)
