"""Data-free neuron merging with weight surgery (Srinivas & Babu 2015, "Data-free parameter pruning
for deep neural networks", BMVC).

Two units ``i``, ``j`` of a layer with (nearly) equal incoming weights ``W_i ~ W_j`` (and biases)
produce (nearly) equal activations after ReLU (or ReLU + max-pool), so unit ``j`` can be removed and
its outgoing weights added to unit ``i``'s: ``a_i <- a_i + a_j``. The paper's saliency of the pair
is ``s_ij = ||a_j||^2 * ||W_i - W_j||^2`` (the expected squared change of the next layer's input);
units are removed greedily in order of the smallest saliency, no data needed. For exactly equal
units the surgery is exact. Works per unit type: Linear neurons, Conv2d channels (outgoing slice =
the consumer's input channel, or its Flatten column block).
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from fortify.compress.base import TRANSFORMS, Data, Transform, TransformResult, check_fraction, count_params, sequential_of
from fortify.compress.prune.dependency import Group, groups, param_layer, refresh_architecture, remove_units


def merge_group(seq: nn.Sequential, group: Group, n_remove: int) -> list[float]:
    """Greedily merge ``n_remove`` units of ``group.producer`` into their nearest twins; returns saliencies.

    Incoming vectors ``(U, D)`` = weight rows with the bias appended; outgoing slices are the consumer
    weight columns of each unit (``(O, S)`` per unit, ``S`` = 1, ``k*k`` or ``H*W``).
    """
    prod, cons = param_layer(seq, group.producer), param_layer(seq, group.consumer)
    units = prod.weight.shape[0]
    w_in = prod.weight.detach().reshape(units, -1)
    if prod.bias is not None:
        w_in = torch.cat([w_in, prod.bias.detach()[:, None]], dim=1)
    dist2 = torch.cdist(w_in.double(), w_in.double()).pow(2)
    dist2.fill_diagonal_(float("inf"))
    dev = cons.weight.device
    alive = torch.ones(units, dtype=torch.bool, device=dev)
    saliencies: list[float] = []
    with torch.no_grad():
        for _ in range(min(n_remove, units - 1)):
            out_norm2 = torch.stack([
                cons.weight[:, group.consumer_index(torch.tensor([u], device=dev))].double().pow(2).sum() for u in range(units)
            ])
            nearest_d, nearest = dist2.min(dim=1)
            sal = out_norm2 * nearest_d
            sal[~alive] = float("inf")
            j = int(torch.argmin(sal))
            i = int(nearest[j])
            cj, ci = group.consumer_index(torch.tensor([j], device=dev)), group.consumer_index(torch.tensor([i], device=dev))
            cons.weight[:, ci] += cons.weight[:, cj]
            cons.weight[:, cj] = 0.0
            alive[j] = False
            dist2[j, :] = float("inf")
            dist2[:, j] = float("inf")
            saliencies.append(float(sal[j]))
    remove_units(seq, group, torch.nonzero(alive).reshape(-1))
    return saliencies


@TRANSFORMS.register("neuron_merge", help="data-free neuron merging with weight surgery (Srinivas & Babu 2015)")
class NeuronMerge(Transform):
    """Args: ``amount`` in [0, 1): fraction of units of every prunable layer merged away, or a
    ``{layer index: fraction}`` mapping (unlisted layers untouched)."""

    def __init__(self, amount: float | Mapping[int, float] = 0.25) -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        if isinstance(amount, Mapping):
            self.amount: float | dict[int, float] = {int(k): check_fraction(v, f"amount[{k}]") for k, v in amount.items()}
        else:
            self.amount = check_fraction(amount, "amount")

    def _run(self, model: nn.Module, example_inputs: torch.Tensor, data: Data | None) -> TransformResult:
        """Run the algorithm on ``model`` (the private deep copy) and return its result and report."""
        seq = sequential_of(model)
        before = count_params(model)[1]
        report: dict[str, list[float]] = {}
        for g in groups(model, example_inputs):
            units = param_layer(seq, g.producer).weight.shape[0]
            frac = self.amount.get(g.producer, 0.0) if isinstance(self.amount, dict) else self.amount
            sal = merge_group(seq, g, int(round(units * frac)))
            report[str(g.producer)] = [len(sal), max(sal) if sal else 0.0]
        refresh_architecture(model)
        return TransformResult(model, {"merged": report, "params_before": before,
                                       "params_total": count_params(model)[1]})


__all__ = ["NeuronMerge", "merge_group"]
