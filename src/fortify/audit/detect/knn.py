"""Deep nearest neighbours (Sun, Ming, Zhu & Li 2022, "Out-of-distribution detection with deep nearest
neighbors"): the distance from the L2-normalised penultimate feature ``z = h / ||h||`` to its ``k``-th nearest
normalised training feature; far is anomalous. ``bank``: at most this many training rows are kept (the first ones;
the paper uses all, or a random fraction). Shapes ``x (N, *sample) -> (N,)``. Cost: fit one forward pass of the
training data; score one forward pass plus ``O(n_bank d)`` per row (exact search, chunked by ``batch_size``).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fortify.audit.detect._features import capture, head
from fortify.audit.detect.base import DEFAULT_BATCH_SIZE, DETECTORS, Detector, batched_features, check_count
from fortify.validation import forward_checked


def penultimate(model: nn.Module, lin: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h (B, d), logits (B, C))``: the input of the head ``lin`` and the model's output."""
    with capture(model, {"head": lin}) as seen:
        logits = forward_checked(model, x)
    return seen["head"][0].flatten(1), logits


def normalised(h: torch.Tensor) -> torch.Tensor:
    return h / h.norm(dim=1, keepdim=True).clamp(min=1e-12)


@DETECTORS.register("knn", help="k-th nearest neighbour distance of normalised features (Sun et al. 2022)")
class KNN(Detector):
    """``||z(x) - z_(k)||``, the distance to the ``k``-th nearest normalised training feature."""

    def __init__(self, k: int = 50, bank: int = 10000, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(batch_size)
        self.k = check_count(k, "k")
        self.bank = check_count(bank, "bank")

    def _fit(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        lin = head(model, x)
        x = x[: self.bank]
        bank = batched_features(lambda b: normalised(penultimate(model, lin, b)[0]), x, self.batch_size)
        return {"head": lin, "bank": bank, "k": min(self.k, bank.shape[0])}

    def _score(self, model: nn.Module, state: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
        z = normalised(penultimate(model, state["head"], x)[0])
        # unit vectors: ||z - b||^2 = 2 - 2 z.b, in float64 (no cancellation for near neighbours)
        cos = z.double() @ state["bank"].double().T
        kth = cos.topk(state["k"], dim=1, largest=True).values[:, -1]
        return (2 - 2 * kth).clamp(min=1e-12).sqrt().to(z.dtype)
