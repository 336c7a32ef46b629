"""ODIN (Liang, Li & Srikant 2018, "Enhancing the reliability of out-of-distribution image detection in neural
networks"): temperature scaling plus input preprocessing.

``x' = x - noise * sign(-d log S_yhat(x; T) / dx)`` (a small step that raises the top softmax probability at
temperature ``T``; in-distribution inputs gain more than OOD ones), then ``score = -max_k softmax(z(x') / T)_k``.
Defaults ``T = 1000``, ``noise = 0.0014`` (the paper's CIFAR values). Shapes ``x (N, *sample) -> (N,)``; cost: two
forward and one backward pass. In :meth:`FittedDetector.score_graph` the preprocessing step is a constant (BPDA).
Nothing to fit. The preprocessed input is not clipped to the data range (as in the paper).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fortify.audit.detect.base import (
    DEFAULT_BATCH_SIZE, DETECTORS, Detector, check_nonnegative, check_positive, logits_of,
)


def preprocess(x: torch.Tensor, objective: Any, noise: float) -> torch.Tensor:
    """``x - noise * sign(d objective(x).sum() / dx)`` with the step detached (``objective``: ``(B, ...) -> (B,)``,
    lower = more in-distribution). Cost: one forward and backward pass."""
    if noise == 0:
        return x
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(objective(xg).sum(), xg)
    return x - noise * g.sign().detach()


@DETECTORS.register("odin", help="temperature + input preprocessing (Liang et al. 2018)")
class ODIN(Detector):
    """``-max softmax(z(x') / T)`` with ``x'`` the preprocessed input."""

    def __init__(self, temperature: float = 1000.0, noise: float = 0.0014, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(batch_size)
        self.temperature = check_positive(temperature, "temperature")
        self.noise = check_nonnegative(noise, "noise")

    def _score(self, model: nn.Module, state: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
        t = self.temperature

        def neg_log_top(xg: torch.Tensor) -> torch.Tensor:
            return -torch.log_softmax(logits_of(model, xg) / t, dim=1).max(dim=1).values

        xp = preprocess(x, neg_log_top, self.noise)
        return -(logits_of(model, xp) / t).softmax(dim=1).max(dim=1).values
