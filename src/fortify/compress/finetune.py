"""Fine-tuning after compression (standard or adversarial), keeping pruned weights at zero.

:func:`finetune` trains a model *in place* with :class:`fortify.train.Trainer` and any registered
task (``standard``, ``pgd_at``, ``trades``, ``fast_at``, ...; adversarial fine-tuning after pruning
as in Sehwag et al. 2020 and Ye et al. 2019). :class:`KeepMasks` is a Trainer callback that
re-applies the sparsity masks after every optimiser step, so a pruned model stays exactly as
sparse (momentum and weight decay cannot revive a pruned weight).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from fortify.compress.base import Data, weight_layers
from fortify.train import Trainer, TrainConfig


def masks_of(model: nn.Module) -> dict[int, torch.Tensor]:
    """``{layer index: weight != 0}`` for every Conv2d/Linear (bool tensors shaped like the weights)."""
    return {i: (m.weight.detach() != 0) for i, m in weight_layers(model)}


def apply_masks(model: nn.Module, masks: Mapping[int, torch.Tensor]) -> None:
    """Zero the weights outside ``masks`` in place (no autograd)."""
    layers = dict(weight_layers(model))
    with torch.no_grad():
        for i, mask in masks.items():
            layers[i].weight.mul_(mask.to(layers[i].weight.dtype))


class KeepMasks:
    """Trainer callback: after each optimiser step, zero the pruned weights again."""

    def __init__(self, model: nn.Module, masks: Mapping[int, torch.Tensor] | None = None) -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        self.model = model
        self.masks = dict(masks) if masks is not None else masks_of(model)

    def on_step_end(self, trainer: Any, step: int, out: Any) -> None:
        """Trainer hook, called after every optimiser step."""
        apply_masks(self.model, self.masks)


def finetune(model: nn.Module, data: Data, *, task: str = "standard", task_args: Mapping[str, Any] | None = None,
             config: TrainConfig | Mapping[str, Any] | None = None, keep_sparsity: bool = True,
             val: Data | None = None) -> list[dict[str, Any]]:
    """Fine-tune ``model`` in place on ``data = (x (N, C, H, W), y (N,))``; returns the Trainer history.

    ``task``: a name in :data:`fortify.train.TASKS` (``pgd_at`` for adversarial fine-tuning) with
    ``task_args`` (e.g. ``{"threat": "linf:0.3", "steps": 10}``). ``config``: TrainConfig or dict
    (default: 1 epoch, SGD lr 0.01, no weight decay). ``keep_sparsity``: keep zero weights at zero.
    """
    from fortify.train.tasks import create as create_task

    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(
        {"epochs": 1, "lr": 0.01, "weight_decay": 0.0, "batch_size": 128, **dict(config or {})})
    callbacks = [KeepMasks(model)] if keep_sparsity else []
    # progress=None: the epoch lines show inside a pipeline step (fortify.progress.enabled), never in library use
    trainer = Trainer(model, create_task(task, **dict(task_args or {})), cfg, progress=None, callbacks=callbacks)
    history = trainer.fit(data, val)
    if keep_sparsity:
        apply_masks(model, callbacks[0].masks)
    return history


__all__ = ["KeepMasks", "apply_masks", "finetune", "masks_of"]


def _register() -> None:
    """Register the ``finetune`` transform (kept out of import order issues with base)."""
    from fortify.compress.base import TRANSFORMS, Transform, TransformResult, count_params

    @TRANSFORMS.register("finetune", help="(adversarial) fine-tuning step for a recipe, keeping sparsity")
    class Finetune(Transform):
        """Fine-tune after any compression step: ``task`` (``pgd_at`` = adversarial fine-tuning),
        ``task_args``, ``config`` (TrainConfig fields), ``keep_sparsity`` (zero weights stay zero)."""

        needs_data = True

        def __init__(self, task: str = "pgd_at", task_args: Mapping[str, Any] | None = None,
                     config: Mapping[str, Any] | None = None, keep_sparsity: bool = True) -> None:
            """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
            from fortify.train.tasks import TASKS

            TASKS.get(task)  # UnknownNameError now, not after the copy
            self.task, self.task_args, self.config = task, dict(task_args or {}), dict(config or {})
            self.keep_sparsity = bool(keep_sparsity)

        def _run(self, model: nn.Module, example_inputs: torch.Tensor, data: Data | None) -> TransformResult:
            """Run the algorithm on ``model`` (the private deep copy) and return its result and report."""
            assert data is not None
            hist = finetune(model, data, task=self.task, task_args=self.task_args, config=self.config,
                            keep_sparsity=self.keep_sparsity)
            nnz, total = count_params(model)
            return TransformResult(model, {"task": self.task, "train_acc": hist[-1].get("train_acc"),
                                           "params_nonzero": nnz, "params_total": total})


_register()
