"""Low-rank factorisation by truncated SVD (Denton et al. 2014; Jaderberg et al. 2014; Zhang et al. 2016).

* ``Linear`` ``W (O, I)`` ~ ``U_r S_r V_r^T``: replaced by ``Linear(I, r, bias=False)`` with weight
  ``sqrt(S_r) V_r^T`` ``(r, I)`` followed by ``Linear(r, O)`` with weight ``U_r sqrt(S_r)`` ``(O, r)``
  and the original bias. Parameters ``r (I + O)`` instead of ``I O``.
* ``Conv2d`` ``W (O, C, k, k)`` reshaped to ``(O, C k k)`` and factorised the same way: a ``k x k``
  convolution ``C -> r`` (same stride/padding, no bias) followed by a ``1 x 1`` convolution ``r -> O``
  with the bias. Exact when ``r`` equals the full rank.

The rank of each layer is chosen either by **energy** (smallest ``r`` keeping a fraction ``energy``
of ``sum S^2``) or by **budget** (the factorised layer keeps at most ``budget`` of its parameters).
A layer is only replaced when factorising actually saves parameters. Optional fine-tuning with any
task (``pgd_at`` for adversarial fine-tuning) follows.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, cast

import torch
from torch import nn

from fortify.compress.base import (
    TRANSFORMS, Data, Transform, TransformResult, check_fraction, check_int, count_params, sequential_of, weight_layers,
)
from fortify.compress.finetune import finetune
from fortify.errors import ConfigError
from fortify.models.registry import ARCH_ATTR


def rank_for(s: torch.Tensor, *, energy: float | None, budget: float | None, full_params: int, per_rank: int) -> int:
    """Rank from singular values ``s`` (descending) by ``energy`` fraction or parameter ``budget`` fraction."""
    if energy is not None:
        e = torch.cumsum(s.double() ** 2, 0) / (s.double() ** 2).sum().clamp_min(1e-30)
        return int(torch.searchsorted(e, torch.tensor([energy], dtype=torch.float64, device=e.device)).item()) + 1
    assert budget is not None
    return max(1, int(math.floor(budget * full_params / per_rank)))


def _pair(value: tuple[int, ...]) -> tuple[int, int]:
    """A Conv2d's ``kernel_size``/``stride``/``padding`` tuple, always of length 2 (torch stores them so)."""
    return cast(tuple[int, int], value)


def _padding(conv: nn.Conv2d) -> str | tuple[int, int]:
    """``conv.padding`` as Conv2d's constructor takes it (a mode string or a pair)."""
    return conv.padding if isinstance(conv.padding, str) else _pair(conv.padding)


def factorize(layer: nn.Conv2d | nn.Linear, rank: int) -> nn.Sequential:
    """Two-layer truncated-SVD replacement of a Conv2d/Linear ``layer`` at ``rank`` (see module doc)."""
    w = layer.weight.detach()
    mat = w.reshape(w.shape[0], -1).double()
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    first = (root[:, None] * vh[:r]).float()
    second = (u[:, :r] * root[None, :]).float()
    a: nn.Conv2d | nn.Linear
    b: nn.Conv2d | nn.Linear
    if isinstance(layer, nn.Linear):
        a, b = nn.Linear(layer.in_features, r, bias=False), nn.Linear(r, layer.out_features, bias=layer.bias is not None)
        a.weight.data.copy_(first)
        b.weight.data.copy_(second)
    else:
        a = nn.Conv2d(layer.in_channels, r, _pair(layer.kernel_size), _pair(layer.stride), _padding(layer),
                      bias=False)
        b = nn.Conv2d(r, layer.out_channels, 1, bias=layer.bias is not None)
        a.weight.data.copy_(first.reshape(r, *w.shape[1:]))
        b.weight.data.copy_(second.reshape(w.shape[0], r, 1, 1))
    if layer.bias is not None and b.bias is not None:  # b has a bias iff layer has one
        b.bias.data.copy_(layer.bias.detach())
    return nn.Sequential(a, b)


@TRANSFORMS.register("low_rank", help="truncated-SVD factorisation of Linear and Conv2d layers")
class LowRank(Transform):
    """Args: exactly one of ``energy`` in (0, 1] or ``budget`` in (0, 1); ``rank`` (int >= 1, fixed
    rank for every layer) overrides both; ``layers`` (indices; default every Conv2d/Linear but the
    classifier); ``finetune_task``/``finetune_args``/``finetune_config``."""

    def __init__(self, energy: float | None = None, budget: float | None = None, rank: int | None = None,
                 layers: list[int] | None = None, finetune_task: str | None = None,
                 finetune_args: Mapping[str, Any] | None = None, finetune_config: Mapping[str, Any] | None = None) -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        if rank is not None:
            rank = check_int(rank, "rank")
        elif (energy is None) == (budget is None):
            raise ConfigError("low_rank needs exactly one of energy=, budget= or rank=")
        if energy is not None:
            check_fraction(energy, "energy", allow_one=True)
            if energy <= 0:
                raise ConfigError(f"energy must be in (0, 1], got {energy!r}")
        if budget is not None and (check_fraction(budget, "budget") <= 0):
            raise ConfigError(f"budget must be in (0, 1), got {budget!r}")
        self.energy, self.budget, self.rank = energy, budget, rank
        self.layers = None if layers is None else [check_int(i, "layer index", lo=0) for i in layers]
        self.finetune_task, self.finetune_args = finetune_task, dict(finetune_args or {})
        self.finetune_config = dict(finetune_config or {})
        self.needs_data = finetune_task is not None

    def _run(self, model: nn.Module, example_inputs: torch.Tensor, data: Data | None) -> TransformResult:
        """Run the algorithm on ``model`` (the private deep copy) and return its result and report."""
        seq = sequential_of(model)
        candidates = dict(weight_layers(model))
        chosen = self.layers if self.layers is not None else sorted(candidates)[:-1]
        for i in chosen:
            if i not in candidates:
                raise ConfigError(f"layer {i} is not a Conv2d/Linear layer (choices: {sorted(candidates)})")
        before = count_params(model)[1]
        ranks: dict[str, list[int]] = {}
        new_layers: list[nn.Module] = []
        for i, layer in enumerate(seq):
            if i not in chosen:
                new_layers.append(layer)
                continue
            weighted = candidates[i]
            w = weighted.weight.detach()
            out_dim, in_dim = w.shape[0], w[0].numel()
            s = torch.linalg.svdvals(w.reshape(out_dim, -1).double())
            r = self.rank or rank_for(s, energy=self.energy, budget=self.budget,
                                      full_params=out_dim * in_dim, per_rank=out_dim + in_dim)
            r = min(r, s.numel())
            if r * (out_dim + in_dim) >= out_dim * in_dim:
                ranks[str(i)] = [int(s.numel()), int(s.numel())]
                new_layers.append(layer)
                continue
            ranks[str(i)] = [int(s.numel()), r]
            new_layers.extend(factorize(weighted, r))
        new_seq = nn.Sequential(*new_layers)
        if hasattr(seq, ARCH_ATTR) and any(v[0] != v[1] for v in ranks.values()):
            pass  # the registry architecture no longer describes the model: not copied
        elif hasattr(seq, ARCH_ATTR):
            setattr(new_seq, ARCH_ATTR, getattr(seq, ARCH_ATTR))
        if model is seq:
            model = new_seq
        else:
            model.inner = new_seq  # type: ignore[assignment]
        if self.finetune_task is not None and data is not None:
            finetune(model, data, task=self.finetune_task, task_args=self.finetune_args,
                     config=self.finetune_config, keep_sparsity=False)
        return TransformResult(model, {"ranks": ranks, "params_before": before, "params_total": count_params(model)[1]})


__all__ = ["LowRank", "factorize", "rank_for"]
