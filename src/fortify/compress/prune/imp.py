"""Iterative magnitude pruning with weight rewinding (Frankle et al. 2019, "Stabilizing the lottery
ticket hypothesis"; Frankle & Carbin 2019, "The lottery ticket hypothesis").

1. Train ``rewind_epochs`` epochs and keep the weights ``theta_k`` (the rewind point).
2. Train to ``epochs`` epochs.
3. Repeat ``rounds`` times: prune ``1 - (1 - sparsity)^(1/rounds)`` of the remaining weights by
   global magnitude, rewind the surviving weights to ``theta_k`` and retrain ``epochs - rewind_epochs``
   epochs with the mask fixed.

Any fortify task drives the training (``pgd_at`` gives adversarial IMP). Data ``(x (N, C, H, W), y (N,))``.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
from torch import nn

from fortify.compress.base import (
    TRANSFORMS, Data, Transform, TransformResult, check_fraction, check_int, count_params, weight_layers,
)
from fortify.compress.finetune import apply_masks, finetune
from fortify.compress.prune.magnitude import SCOPES, magnitude_masks
from fortify.errors import ConfigError


@TRANSFORMS.register("imp_rewind", help="iterative magnitude pruning with weight rewinding (Frankle et al. 2019)")
class IterativeMagnitudePrune(Transform):
    """Args: ``sparsity`` in [0, 1) (final), ``rounds`` >= 1, ``epochs`` per training run,
    ``rewind_epochs`` in [0, epochs), ``task``/``task_args``, ``config`` (TrainConfig fields), ``scope``."""

    needs_data = True

    def __init__(self, sparsity: float = 0.8, rounds: int = 3, epochs: int = 2, rewind_epochs: int = 1,
                 task: str = "standard", task_args: Mapping[str, Any] | None = None,
                 config: Mapping[str, Any] | None = None, scope: str = "global") -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        self.sparsity = check_fraction(sparsity, "sparsity")
        self.rounds = check_int(rounds, "rounds")
        self.epochs = check_int(epochs, "epochs")
        self.rewind_epochs = check_int(rewind_epochs, "rewind_epochs", lo=0)
        if self.rewind_epochs >= self.epochs:
            raise ConfigError(f"rewind_epochs must be < epochs ({self.epochs}), got {rewind_epochs!r}")
        if scope not in SCOPES:
            raise ConfigError(f"scope must be one of {', '.join(SCOPES)}; got {scope!r}")
        self.task, self.task_args, self.config, self.scope = task, dict(task_args or {}), dict(config or {}), scope

    def _train(self, model: nn.Module, data: Data, epochs: int, sparse: bool) -> None:
        """Train ``model`` in place for ``epochs`` with the configured task (masks kept when ``sparse``)."""
        finetune(model, data, task=self.task, task_args=self.task_args,
                 config={**self.config, "epochs": epochs}, keep_sparsity=sparse)

    def _run(self, model: nn.Module, example_inputs: torch.Tensor, data: Data | None) -> TransformResult:
        """Run the algorithm on ``model`` (the private deep copy) and return its result and report."""
        assert data is not None
        if self.rewind_epochs:
            self._train(model, data, self.rewind_epochs, sparse=False)
        rewind = copy.deepcopy(model.state_dict())
        self._train(model, data, self.epochs - self.rewind_epochs, sparse=False)
        per_round = 1.0 - (1.0 - self.sparsity) ** (1.0 / self.rounds)
        layers = weight_layers(model)
        masks = {i: torch.ones_like(m.weight, dtype=torch.bool) for i, m in layers}
        densities = []
        for r in range(self.rounds):
            target = 1.0 - (1.0 - per_round) ** (r + 1) if r < self.rounds - 1 else self.sparsity
            with torch.no_grad():  # magnitudes of the trained weights, already-pruned ones stay pruned
                apply_masks(model, masks)
            masks = magnitude_masks(model, target, self.scope)
            model.load_state_dict(rewind)
            apply_masks(model, masks)
            self._train(model, data, self.epochs - self.rewind_epochs, sparse=True)
            densities.append(1.0 - target)
        nnz, total = count_params(model)
        return TransformResult(model, {"sparsity": self.sparsity, "rounds": self.rounds, "density_per_round": densities,
                                       "params_nonzero": nnz, "params_total": total})


__all__ = ["IterativeMagnitudePrune"]
