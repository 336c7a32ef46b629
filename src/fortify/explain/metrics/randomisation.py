"""Cascading model-parameter randomisation (Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim 2018,
"Sanity checks for saliency maps").

On a *copy* of the model (the user's model is never touched), the layers with parameters are
re-initialised one by one from the output towards the input (forward-execution order, reversed;
``reset_parameters`` under a seeded, forked RNG), cumulatively; after each layer the attribution
method (``attribution`` + ``attribution_args``) is recomputed for the same targets, and its Spearman
rank correlation with the ``attributions`` passed in (taken as the method's output on the trained
model; absolute values with ``absolute=True``, ties ranked by their average) is recorded
(``similarity="ssim"``: the structural similarity of the maps instead, see
:mod:`fortify.explain.similarity`).
``values (N,)``: the mean correlation over the layers; ``extra["per_layer"] (N, L)`` and
``extra["layers"]`` (names, output side first). A method that explains the model must change when
its weights are destroyed: **lower is better**. A constant attribution has no rank correlation and
scores 0. Cost: ``L`` calls of the attribution method (``L`` = layers with parameters) plus one
copy of the model.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from fortify.errors import ConfigError
from fortify.models.graph import execution_order
from fortify.explain.base import DEFAULT_BATCH_SIZE, Attribution
from fortify.explain.metrics.base import ATTRIBUTION_METRICS, AttributionMetric
from fortify.explain.metrics.sensitivity import build_method
from fortify.explain.similarity import SIMILARITIES, centred_ranks, similarity, spearman, spearman_with

__all__ = ["CascadingRandomisation", "layers_by_execution", "randomise", "spearman"]


def layers_by_execution(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """Leaf modules with parameters, in the order one forward pass of ``x[:1]`` runs them."""
    leaves = [(n, m) for n, m in model.named_modules()
              if not list(m.children()) and any(True for _ in m.parameters(recurse=False))]
    named = dict(leaves)
    seen = list(dict.fromkeys(execution_order(model, x, leaves)))
    return [(n, named[n]) for n in seen]


def randomise(module: nn.Module, seed: int) -> None:
    """Re-initialise one module's parameters (its ``reset_parameters``, else normal(0, 0.1)) under a
    forked RNG seeded with ``seed`` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        else:
            for p in module.parameters(recurse=False):
                p.normal_(0.0, 0.1)


@ATTRIBUTION_METRICS.register("randomisation", help="rank correlation with the attribution of a cascade of randomised models (lower is better)")
class CascadingRandomisation(AttributionMetric):
    """Adebayo et al.'s cascading randomisation sanity check; lower is better."""

    higher_is_better = False

    def __init__(self, attribution: str | Attribution = "saliency", attribution_args: dict[str, Any] | None = None,
                 absolute: bool = True, seed: int = 0, similarity: str = "spearman",
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(batch_size)
        self.method = build_method(attribution, attribution_args)
        if similarity not in SIMILARITIES:
            raise ConfigError(f"similarity must be one of {', '.join(SIMILARITIES)}, got {similarity!r}")
        self.absolute, self.seed, self.similarity = bool(absolute), int(seed), similarity

    def _run(self, model: nn.Module, x: torch.Tensor, attributions: torch.Tensor,
             target: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        clone = copy.deepcopy(model)  # the user's model is frozen here; the copy keeps its eval flags
        layers = list(reversed(layers_by_execution(clone, x)))
        ref = attributions.abs() if self.absolute else attributions
        ranked = centred_ranks(ref) if self.similarity == "spearman" else None  # the reference, ranked once
        rows = []
        for k, (_, module) in enumerate(layers):
            randomise(module, self.seed + k)
            out = self.method(clone, x, target)
            out = out.abs() if self.absolute else out
            rows.append(spearman_with(ranked, out).to(ref.dtype) if ranked is not None
                        else similarity(ref, out, self.similarity))
        per_layer = torch.stack(rows, dim=1) if rows else torch.zeros(x.shape[0], 0, dtype=x.dtype, device=x.device)
        values = per_layer.mean(dim=1) if rows else torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        return values, {"per_layer": per_layer, "layers": [n for n, _ in layers]}
