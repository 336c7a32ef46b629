"""ReAct (Sun, Guo & Li 2021, "ReAct: out-of-distribution detection with rectified activations"): clip the
penultimate activations at ``c``, the ``percentile``-th percentile of the training activations (90 in the paper),
recompute the logits ``W min(h, c) + b`` and score them by energy (Liu et al. 2020). Shapes ``x (N, *sample) ->
(N,)``. Cost: fit one forward pass of the training data; score one forward pass (the head's input replaced by a
forward pre-hook, removed afterwards)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fortify.audit.detect._features import head, replaced_input
from fortify.audit.detect.base import DEFAULT_BATCH_SIZE, DETECTORS, Detector, batched_features, check_positive
from fortify.audit.detect.energy import energy
from fortify.audit.detect.knn import penultimate
from fortify.errors import ConfigError
from fortify.validation import forward_checked


@DETECTORS.register("react", help="energy of logits with clipped penultimate activations (Sun et al. 2021)")
class ReAct(Detector):
    """Energy of ``W min(h, c) + b`` with ``c`` a percentile of the training activations."""

    def __init__(self, percentile: float = 90.0, temperature: float = 1.0, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(batch_size)
        if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0 < percentile <= 100:
            raise ConfigError(f"percentile must be in (0, 100], got {percentile!r}")
        self.percentile = float(percentile)
        self.temperature = check_positive(temperature, "temperature")

    def _fit(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        lin = head(model, x)
        h = batched_features(lambda b: penultimate(model, lin, b)[0], x, self.batch_size).flatten()
        if h.numel() > 2_000_000:  # quantile's input limit: a deterministic strided subsample
            h = h[:: h.numel() // 2_000_000 + 1]
        return {"head": lin, "clip": float(torch.quantile(h.double(), self.percentile / 100))}

    def _score(self, model: nn.Module, state: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
        c = state["clip"]
        with replaced_input(state["head"], lambda h: h.clamp(max=c)):
            logits = forward_checked(model, x)
        return energy(logits, self.temperature)
