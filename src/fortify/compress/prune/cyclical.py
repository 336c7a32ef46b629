"""Cyclical pruning (Srinivas, Kuzmin, Nagel, van Baalen, Skliar, Blankevoort 2022, "Cyclical
pruning for sparse neural networks", CVPR workshops).

Training is split into ``cycles``; inside each cycle the sparsity follows the cubic ramp of Zhu &
Gupta 2018 from 0 to the target ``s``: ``s(t) = s * (1 - (1 - t)^3)`` for ``t`` in [0, 1]. Masks are
recomputed from the magnitudes of the dense weights at every step and applied with a
straight-through estimator, so a weight pruned early in one cycle keeps receiving gradient and can
regrow when the next cycle restarts at low sparsity. The last ``hold`` fraction of each cycle keeps
the target sparsity so the network adapts to it before the next restart. At the end the target mask is applied for
good. Any fortify task drives the loss (``pgd_at`` for adversarial cyclical pruning).
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
from fortify.compress.reparam import ReparamNet, ste_mask
from fortify.models.state import train_mode
from fortify.train import Trainer, TrainConfig
from fortify.train.tasks import create as create_task


def cyclical_sparsity(step: int, total: int, cycles: int, target: float, hold: float = 0.3) -> float:
    """Sparsity at optimiser step ``step`` of ``total``: within each of ``cycles`` equal cycles a
    cubic ramp 0 -> ``target`` over the first ``1 - hold`` of the cycle, then ``target`` held."""
    per = max(1, total // cycles)
    ramp = max(1.0, (1.0 - hold) * per)
    t = min(1.0, (step % per + 1) / ramp) if step < per * cycles else 1.0
    return target * (1.0 - (1.0 - t) ** 3)


class _CyclicMasks:
    """Trainer callback + weight function: recompute masks after each step from the dense weights."""

    def __init__(self, model: nn.Module, total: int, cycles: int, target: float) -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        self.model, self.total, self.cycles, self.target = model, total, cycles, target
        self.masks = magnitude_masks(model, cyclical_sparsity(0, total, cycles, target))

    def weight(self, i: int, w: torch.Tensor) -> torch.Tensor:
        """Effective weight of layer ``i`` in the forward pass (same shape as ``w``)."""
        return ste_mask(w, self.masks[i]) if i in self.masks else w

    def on_step_end(self, trainer: Any, step: int, out: Any) -> None:
        """Trainer hook, called after every optimiser step."""
        self.masks = magnitude_masks(self.model, cyclical_sparsity(step, self.total, self.cycles, self.target))


@TRANSFORMS.register("cyclical_prune", help="cyclical pruning with regrowth (Srinivas et al. 2022)")
class CyclicalPrune(Transform):
    """Args: ``sparsity`` in [0, 1), ``cycles`` >= 1, ``epochs`` >= cycles recommended, ``task``/
    ``task_args``, ``config`` (TrainConfig fields; default SGD lr 0.01 constant)."""

    needs_data = True

    def __init__(self, sparsity: float = 0.9, cycles: int = 3, epochs: int = 3, task: str = "standard",
                 task_args: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None) -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        self.sparsity = check_fraction(sparsity, "sparsity")
        self.cycles = check_int(cycles, "cycles")
        self.epochs = check_int(epochs, "epochs")
        self.task, self.task_args, self.config = task, dict(task_args or {}), dict(config or {})

    def _run(self, model: nn.Module, example_inputs: torch.Tensor, data: Data | None) -> TransformResult:
        """Run the algorithm on ``model`` (the private deep copy) and return its result and report."""
        x, y = check_data(data)
        cfg = TrainConfig.from_dict({"lr": 0.01, "weight_decay": 0.0, "schedule": "constant", "batch_size": 128,
                                     **self.config, "epochs": self.epochs})
        total = self.epochs * -(-x.shape[0] // cfg.batch_size)
        cyc = _CyclicMasks(model, total, self.cycles, self.sparsity)
        net = ReparamNet(model, cyc.weight)
        with train_mode(model):  # the copy trains as the Trainer would train it (the wrapper's root is new)
            Trainer(net, create_task(self.task, **self.task_args), cfg, progress=False, callbacks=[cyc]).fit((x, y))
        apply_masks(model, magnitude_masks(model, self.sparsity))
        nnz, total_p = count_params(model)
        return TransformResult(model, {"sparsity": self.sparsity, "cycles": self.cycles,
                                       "params_nonzero": nnz, "params_total": total_p})


__all__ = ["CyclicalPrune", "cyclical_sparsity"]
