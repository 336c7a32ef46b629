"""Targeted dropout (Gomez, Zhang, Kamalakara, Madaan, Swersky, Gal, Hinton 2019, "Learning sparse
networks using targeted dropout").

During training, for every output unit of every Conv2d/Linear (each row of ``W (U, ...)``), the
``gamma`` fraction of weights with the smallest magnitude are the *targets*; each target is dropped
(set to 0) independently with probability ``alpha``. The network learns to rely on its large
weights, so a later magnitude pruning at rate ``gamma`` costs little accuracy. The training task
``targeted_dropout`` (wraps any base task) lives with the other tasks in
:mod:`fortify.train.tasks.targeted_dropout` (re-exported here); this module registers the transform
``targeted_dropout_prune``: train with that task, then magnitude-prune at ``gamma``.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from fortify.compress.base import (
    TRANSFORMS, Data, Transform, TransformResult, check_data, check_fraction, check_int, count_params,
)
from fortify.compress.finetune import apply_masks
from fortify.compress.prune.magnitude import magnitude_masks
from fortify.train import Trainer, TrainConfig
from fortify.train.tasks.targeted_dropout import TargetedDropoutTask, targeted_dropout_weight


@TRANSFORMS.register("targeted_dropout_prune", help="train with targeted dropout, then magnitude-prune at gamma")
class TargetedDropoutPrune(Transform):
    """Args: ``gamma``/``alpha`` in [0, 1), ``epochs``, ``base`` task + ``base_args``, ``config``."""

    needs_data = True

    def __init__(self, gamma: float = 0.75, alpha: float = 0.66, epochs: int = 1, base: str = "standard",
                 base_args: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None) -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        self.gamma = check_fraction(gamma, "gamma")
        self.alpha = check_fraction(alpha, "alpha", allow_one=True)
        self.epochs = check_int(epochs, "epochs")
        self.base, self.base_args, self.config = base, dict(base_args or {}), dict(config or {})

    def _run(self, model: nn.Module, example_inputs: torch.Tensor, data: Data | None) -> TransformResult:
        """Run the algorithm on ``model`` (the private deep copy) and return its result and report."""
        x, y = check_data(data)
        task = TargetedDropoutTask(self.base, self.base_args, self.gamma, self.alpha)
        cfg = TrainConfig.from_dict({"lr": 0.01, "weight_decay": 0.0, "batch_size": 128, **self.config,
                                     "epochs": self.epochs})
        Trainer(model, task, cfg, progress=False).fit((x, y))
        apply_masks(model, magnitude_masks(model, self.gamma))
        nnz, total = count_params(model)
        return TransformResult(model, {"sparsity": self.gamma, "params_nonzero": nnz, "params_total": total})


__all__ = ["TargetedDropoutPrune", "TargetedDropoutTask", "targeted_dropout_weight"]
