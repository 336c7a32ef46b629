"""Maximum logit (Hendrycks et al. 2022, "Scaling out-of-distribution detection for real-world settings"):
``score = -max_k z_k``. Shapes ``x (N, *sample) -> (N,)``; cost: one forward pass. Nothing to fit."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fortify.audit.detect.base import DETECTORS, Detector, logits_of


@DETECTORS.register("max-logit", help="negative maximum logit (Hendrycks et al. 2022)")
class MaxLogit(Detector):
    """``-max z``: a small top logit is anomalous."""

    def _score(self, model: nn.Module, state: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
        return -logits_of(model, x).max(dim=1).values
