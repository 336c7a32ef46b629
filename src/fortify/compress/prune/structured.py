"""Structured channel / neuron pruning that physically removes units across dependent layers.

Filter pruning by norm (Li et al. 2017, "Pruning filters for efficient ConvNets"): each output unit
``u`` of a Conv2d/Linear gets the importance ``||[W_u, b_u]||_p`` (p = 1 or 2, weights and bias of
the unit); the lowest ``amount`` fraction of every prunable layer is removed together with the
consumer slices it feeds (see :mod:`fortify.compress.prune.dependency`). A unit with zero
importance outputs exactly 0 (``relu(0 * x + 0)``), so removing it leaves every output unchanged.
The result has fewer parameters, MACs and bytes, and can be saved with :func:`fortify.models.save`
(widths are written back into the architecture record) or :func:`save_compressed`.

A model that is not a plain Sequential of supported layers (a ResNet, a DenseNet, a Conv1d net, an
MLP with BatchNorm) is pruned through its traced graph instead
(:func:`fortify.compress.prune.graph_prune.prune_graph`: coupled channels of residual adds and
concats removed together); ``amount`` must then be a float (it is the per-group fraction).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from fortify.compress.base import (
    TRANSFORMS, Data, Transform, TransformResult, check_fraction, count_params, sequential_of,
)
from fortify.compress.finetune import finetune
from fortify.compress.prune.dependency import groups, param_layer, refresh_architecture, remove_units
from fortify.errors import ConfigError, UnsupportedLayerError

CRITERIA = ("l1", "l2")


def unit_importance(layer: nn.Conv2d | nn.Linear, criterion: str = "l2") -> torch.Tensor:
    """``(U,)`` norm of each output unit's incoming weights and bias (``W`` is ``(U, ...)``)."""
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    if layer.bias is not None:
        w = torch.cat([w, layer.bias.detach()[:, None]], dim=1)
    return w.abs().sum(1) if criterion == "l1" else w.norm(dim=1)


@TRANSFORMS.register("channel_prune", help="structured channel/neuron pruning (physically removes units)")
class ChannelPrune(Transform):
    """Args: ``amount`` in [0, 1): fraction of units removed from every prunable layer (a float, or a
    ``{layer index: fraction}`` mapping); ``criterion`` ``"l1"``/``"l2"``; optional fine-tuning as in
    :class:`fortify.compress.prune.magnitude.MagnitudePrune`."""

    def __init__(self, amount: float | Mapping[int, float] = 0.5, criterion: str = "l2",
                 finetune_task: str | None = None, finetune_args: Mapping[str, Any] | None = None,
                 finetune_config: Mapping[str, Any] | None = None) -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        if isinstance(amount, Mapping):
            self.amount: float | dict[int, float] = {int(k): check_fraction(v, f"amount[{k}]") for k, v in amount.items()}
        else:
            self.amount = check_fraction(amount, "amount")
        if criterion not in CRITERIA:
            raise ConfigError(f"criterion must be one of {', '.join(CRITERIA)}; got {criterion!r}")
        self.criterion = criterion
        self.finetune_task, self.finetune_args = finetune_task, dict(finetune_args or {})
        self.finetune_config = dict(finetune_config or {})
        self.needs_data = finetune_task is not None

    def _run(self, model: nn.Module, example_inputs: torch.Tensor, data: Data | None) -> TransformResult:
        """Run the algorithm on ``model`` (the private deep copy) and return its result and report."""
        try:
            seq = sequential_of(model)
        except UnsupportedLayerError:
            return self._run_graph(model, example_inputs, data)
        before = count_params(model)[1]
        widths: dict[str, list[int]] = {}
        for g in groups(model, example_inputs):
            frac = self.amount.get(g.producer, 0.0) if isinstance(self.amount, dict) else self.amount
            imp = unit_importance(param_layer(seq, g.producer), self.criterion)
            n_keep = max(1, int(round(imp.numel() * (1.0 - frac))))
            keep = torch.sort(torch.argsort(imp, descending=True, stable=True)[:n_keep]).values
            widths[str(g.producer)] = [int(imp.numel()), n_keep]
            remove_units(seq, g, keep)
        refresh_architecture(model)
        if self.finetune_task is not None and data is not None:
            finetune(model, data, task=self.finetune_task, task_args=self.finetune_args,
                     config=self.finetune_config, keep_sparsity=False)
        after = count_params(model)[1]
        return TransformResult(model, {"widths": widths, "params_before": before, "params_total": after})

    def _run_graph(self, model: nn.Module, example_inputs: torch.Tensor, data: Data | None) -> TransformResult:
        """Any traceable model: graph channel groups (DepGraph), then the optional fine-tuning."""
        from fortify.compress.prune.graph_prune import prune_graph

        if isinstance(self.amount, dict):
            raise ConfigError("amount as a {layer index: fraction} mapping needs an nn.Sequential model; "
                              f"{type(model).__name__} is pruned by coupled channel groups: give one float")
        report = prune_graph(model, example_inputs, self.amount, self.criterion)
        if self.finetune_task is not None and data is not None:
            finetune(model, data, task=self.finetune_task, task_args=self.finetune_args,
                     config=self.finetune_config, keep_sparsity=False)
        return TransformResult(model, report)


__all__ = ["ChannelPrune", "CRITERIA", "unit_importance"]
