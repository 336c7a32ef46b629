"""Random-logit test (Sixt, Granz & Landgraf 2020, "When explanations lie: why many modified BP
attributions fail"; the class-sensitivity check of Adebayo et al. 2018's sanity checks).

An explanation of class ``t`` should differ from the explanation of another class ``t'``: the
method (``attribution`` + ``attribution_args``) is re-run for one other class per example, drawn
uniformly from the ``C - 1`` classes other than the explained one (seeded ``torch.Generator``, so
the draw does not depend on the batching), and ``values (N,)`` is the Spearman rank correlation of
the ``attributions`` passed in (taken as the method's output for ``target``) with the map of the
random class (absolute values with ``absolute=True``; ``similarity="ssim"``: structural similarity
of the maps scaled to [0, 1] instead, as Quantus's ``RandomLogit`` does). A map that does not
depend on the class (an edge detector) scores close to 1: **lower is better**.
``extra["other"] (N,)``: the classes drawn. Cost: one call of the attribution method on ``N`` rows
(``N`` forward and backward passes for a gradient method).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fortify.errors import ConfigError, InputError
from fortify.explain.base import DEFAULT_BATCH_SIZE, Attribution
from fortify.explain.metrics.base import ATTRIBUTION_METRICS, AttributionMetric
from fortify.explain.metrics.sensitivity import build_method
from fortify.explain.ops import predict_logits
from fortify.explain.similarity import SIMILARITIES, similarity

__all__ = ["RandomLogit", "other_classes"]


def other_classes(target: torch.Tensor, classes: int, seed: int) -> torch.Tensor:
    """One class per row drawn uniformly from the ``classes - 1`` classes other than ``target[i]``
    (CPU generator seeded with ``seed``): ``(N,) -> (N,)`` int64 on ``target``'s device."""
    g = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, classes, (target.shape[0],), generator=g).to(target.device)
    return (target + shift) % classes


@ATTRIBUTION_METRICS.register("random-logit", help="similarity of the map of a random other class with the explained class's (lower is better)")
class RandomLogit(AttributionMetric):
    """Random-logit test: rank correlation (or SSIM) with the attribution of a random other class;
    lower is better."""

    higher_is_better = False
    stochastic = True

    def __init__(self, attribution: str | Attribution = "saliency", attribution_args: dict[str, Any] | None = None,
                 absolute: bool = True, similarity: str = "spearman", seed: int = 0,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(batch_size)
        self.method = build_method(attribution, attribution_args)
        if similarity not in SIMILARITIES:
            raise ConfigError(f"similarity must be one of {', '.join(SIMILARITIES)}, got {similarity!r}")
        self.absolute, self.similarity, self.seed = bool(absolute), similarity, int(seed)

    def _run(self, model: nn.Module, x: torch.Tensor, attributions: torch.Tensor,
             target: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        classes = int(predict_logits(model, x[:1], 1).shape[1])
        if classes < 2:
            raise InputError(f"the random-logit test needs a model with at least 2 classes, got {classes}")
        other = other_classes(target, classes, self.seed)
        out = self.method(model, x, other)
        a, b = (attributions.abs(), out.abs()) if self.absolute else (attributions, out)
        return similarity(a, b, self.similarity), {"other": other}
