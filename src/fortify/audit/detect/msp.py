"""Maximum softmax probability (Hendrycks & Gimpel 2017, "A baseline for detecting misclassified and
out-of-distribution examples"): ``score = -max_k softmax(z)_k``. Shapes ``x (N, *sample) -> (N,)``; cost: one
forward pass. Nothing to fit."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fortify.audit.detect.base import DETECTORS, Detector, logits_of


@DETECTORS.register("msp", help="negative maximum softmax probability (Hendrycks & Gimpel 2017)")
class MSP(Detector):
    """``-max softmax(z)``: low confidence is anomalous."""

    def _score(self, model: nn.Module, state: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
        return -logits_of(model, x).softmax(dim=1).max(dim=1).values
