"""Targeted dropout (Gomez, Zhang, Kamalakara, Madaan, Swersky, Gal, Hinton 2019, "Learning sparse
networks using targeted dropout").

During training, for every output unit of every Conv2d/Linear (each row of ``W (U, ...)``), the
``gamma`` fraction of weights with the smallest magnitude are the *targets*; each target is dropped
(set to 0) independently with probability ``alpha``. The network learns to rely on its large
weights, so a later magnitude pruning at rate ``gamma`` costs little accuracy. Available as

* the task ``targeted_dropout`` (wraps any base task: ``base="pgd_at"`` gives adversarial targeted
  dropout), usable by :class:`fortify.train.Trainer` and recipes;
* the transform ``targeted_dropout_prune``: train with targeted dropout, then prune at ``gamma``.
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
from fortify.compress.reparam import ReparamNet
from fortify.train import Trainer, TrainConfig
from fortify.train.tasks import TASKS, Task
from fortify.train.tasks import create as create_task


def targeted_dropout_weight(w: torch.Tensor, gamma: float, alpha: float, generator: torch.Generator | None) -> torch.Tensor:
    """Drop each of the ``gamma`` smallest-|w| weights of every row of ``w (U, ...)`` with probability ``alpha``."""
    rows = w.reshape(w.shape[0], -1)
    k = int(gamma * rows.shape[1])
    if k == 0 or alpha == 0:
        return w
    thresh = rows.detach().abs().kthvalue(k, dim=1, keepdim=True).values
    target = rows.detach().abs() <= thresh
    drop = torch.rand(rows.shape, generator=generator, device=w.device) < alpha
    return (rows * ~(target & drop)).reshape(w.shape)


@TASKS.register("targeted_dropout", help="targeted dropout around any base task (Gomez et al. 2019)")
class TargetedDropoutTask(Task):
    """Args: ``base`` task name and ``base_args``; ``gamma`` (targeted fraction) and ``alpha`` (drop rate) in [0, 1]."""

    name = "targeted_dropout"

    def __init__(self, base: str = "standard", base_args: Mapping[str, Any] | None = None,
                 gamma: float = 0.5, alpha: float = 0.5) -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        super().__init__()
        self.base = create_task(base, **dict(base_args or {}))
        self.gamma = check_fraction(gamma, "gamma", allow_one=True)
        self.alpha = check_fraction(alpha, "alpha", allow_one=True)
        self.generator: torch.Generator | None = None

    def set_progress(self, progress: float, epoch: int) -> None:
        """Forward training progress to the wrapped task too."""
        super().set_progress(progress, epoch)
        self.base.set_progress(progress, epoch)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """Run the base task on ``model`` with targeted dropout applied to its weights (train mode only)."""
        self.base.generator = self.generator  # type: ignore[attr-defined]

        def weight(i: int, w: torch.Tensor) -> torch.Tensor:
            """Effective weight of layer ``i`` in the forward pass (same shape as ``w``)."""
            if not net.training:
                return w
            return targeted_dropout_weight(w, self.gamma, self.alpha, None)

        net = ReparamNet(model, weight)
        net.train(model.training)
        return self.base(net, x, y)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped task's state (exact resume)."""
        return self.base.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the wrapped task's state."""
        self.base.load_state_dict(state)


@TRANSFORMS.register("targeted_dropout_prune", help="train with targeted dropout, then magnitude-prune at gamma")
class TargetedDropoutPrune(Transform):
    """Args: ``gamma``/``alpha`` in [0, 1), ``epochs``, ``base`` task + ``base_args``, ``config``."""

    name = "targeted_dropout_prune"
    needs_data = True

    def __init__(self, gamma: float = 0.75, alpha: float = 0.66, epochs: int = 1, base: str = "standard",
                 base_args: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None) -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        self.gamma = check_fraction(gamma, "gamma")
        self.alpha = check_fraction(alpha, "alpha", allow_one=True)
        self.epochs = check_int(epochs, "epochs")
        self.base, self.base_args, self.config = base, dict(base_args or {}), dict(config or {})

    def _apply(self, model: nn.Module, example_inputs: torch.Tensor, data: Data | None) -> TransformResult:
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
