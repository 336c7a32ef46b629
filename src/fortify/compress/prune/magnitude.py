"""Unstructured magnitude pruning (Han et al. 2015, "Learning both weights and connections"), global or per layer.

Zeroes the ``sparsity`` fraction of smallest-magnitude weights of every Conv2d/Linear, either per
layer (each layer loses the same fraction) or globally (one threshold over all layers, as in
Frankle & Carbin 2019). Biases are kept. The pruned model is a plain model with exact zeros; save
it with :func:`fortify.compress.formats.save_compressed` (``sparse`` encoding) to get real bytes.
Optional fine-tuning (``finetune_task="pgd_at"`` for adversarial fine-tuning) keeps the zeros.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from fortify.compress.base import (
    TRANSFORMS, Data, Transform, TransformResult, check_fraction, count_params, weight_layers,
)
from fortify.compress.finetune import finetune
from fortify.errors import ConfigError

SCOPES = ("global", "layer")


def magnitude_masks(model: nn.Module, sparsity: float, scope: str = "layer",
                    skip_last: bool = False) -> dict[int, torch.Tensor]:
    """Keep-masks ``{layer index: bool tensor}`` removing the smallest ``sparsity`` fraction of |w|.

    Ties at the threshold are broken by position (exactly ``round(sparsity * n)`` weights pruned).
    """
    layers = weight_layers(model)
    if skip_last:
        layers = layers[:-1]
    masks: dict[int, torch.Tensor] = {}
    if scope == "layer":
        for i, m in layers:
            masks[i] = _keep_top(m.weight.detach().abs().reshape(-1), sparsity).reshape(m.weight.shape)
    else:
        scores = torch.cat([m.weight.detach().abs().reshape(-1) for _, m in layers])
        keep = _keep_top(scores, sparsity)
        start = 0
        for i, m in layers:
            n = m.weight.numel()
            masks[i] = keep[start: start + n].reshape(m.weight.shape)
            start += n
    return masks


def _keep_top(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool mask keeping the ``(1 - sparsity)`` largest entries of a 1-D ``scores`` tensor."""
    n_prune = int(round(sparsity * scores.numel()))
    keep = torch.ones_like(scores, dtype=torch.bool)
    if n_prune > 0:
        keep[torch.argsort(scores, stable=True)[:n_prune]] = False
    return keep


@TRANSFORMS.register("magnitude_prune", help="unstructured magnitude pruning (global or per layer)")
class MagnitudePrune(Transform):
    """Args: ``sparsity`` in [0, 1); ``scope`` ``"layer"`` or ``"global"``; ``skip_last`` keeps the
    classifier dense; ``finetune_task``/``finetune_args``/``finetune_config`` optional fine-tuning
    (needs ``data``)."""

    def __init__(self, sparsity: float = 0.9, scope: str = "layer", skip_last: bool = False,
                 finetune_task: str | None = None, finetune_args: Mapping[str, Any] | None = None,
                 finetune_config: Mapping[str, Any] | None = None) -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        self.sparsity = check_fraction(sparsity, "sparsity")
        if scope not in SCOPES:
            raise ConfigError(f"scope must be one of {', '.join(SCOPES)}; got {scope!r}")
        self.scope, self.skip_last = scope, bool(skip_last)
        self.finetune_task, self.finetune_args = finetune_task, dict(finetune_args or {})
        self.finetune_config = dict(finetune_config or {})
        self.needs_data = finetune_task is not None

    def _run(self, model: nn.Module, example_inputs: torch.Tensor, data: Data | None) -> TransformResult:
        """Run the algorithm on ``model`` (the private deep copy) and return its result and report."""
        masks = magnitude_masks(model, self.sparsity, self.scope, self.skip_last)
        layers = dict(weight_layers(model))
        with torch.no_grad():
            for i, mask in masks.items():
                layers[i].weight.mul_(mask)
        history = None
        if self.finetune_task is not None and data is not None:
            history = finetune(model, data, task=self.finetune_task, task_args=self.finetune_args,
                               config=self.finetune_config)
        nnz, total = count_params(model)
        report = {"sparsity": self.sparsity, "scope": self.scope, "params_nonzero": nnz, "params_total": total,
                  "layer_density": {str(i): float(m.float().mean()) for i, m in masks.items()}}
        if history:
            report["finetune_last"] = {k: v for k, v in history[-1].items() if isinstance(v, (int, float))}
        return TransformResult(model, report)


__all__ = ["MagnitudePrune", "magnitude_masks", "SCOPES"]
