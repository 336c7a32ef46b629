"""HYDRA: pruning with importance scores optimised under the adversarial loss (Sehwag, Wang, Mittal,
Jana 2020, "HYDRA: Pruning adversarially robust neural networks", NeurIPS).

The pre-trained weights ``W`` are frozen; every weight gets a score ``s`` initialised as
``s = W * sqrt(6 / fan_in) / max|W|`` (the paper's scaled-magnitude init). The forward pass uses
``W * m(s)`` where ``m`` keeps the top ``(1 - sparsity)`` fraction of ``|s|`` per layer; the gradient
reaches ``s`` through a straight-through estimator (``d/ds = dL/dW_eff * W``). The scores are
trained with a robust objective (``pgd_at`` by default, TRADES also works), the final mask is
applied, and the surviving weights are adversarially fine-tuned with the mask fixed.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from fortify.compress.base import (
    TRANSFORMS, Data, Transform, TransformResult, check_data, check_fraction, check_int, count_params, weight_layers,
)
from fortify.compress.finetune import apply_masks, finetune
from fortify.compress.prune.magnitude import _keep_top
from fortify.compress.reparam import ReparamNet
from fortify.models.state import train_mode
from fortify.train import Trainer, TrainConfig
from fortify.train.tasks import create as create_task


class HydraScores(nn.Module):
    """Score parameters ``s_i`` (one per weight of layer ``i``) and the top-k masked weight function."""

    def __init__(self, model: nn.Module, sparsity: float) -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        super().__init__()
        self.sparsity = sparsity
        self.scores = nn.ParameterDict()
        for i, m in weight_layers(model):
            w = m.weight.detach()
            fan_in = w[0].numel()
            self.scores[str(i)] = nn.Parameter(w * math.sqrt(6.0 / fan_in) / w.abs().max().clamp_min(1e-12))

    def mask(self, i: int) -> torch.Tensor:
        """Bool keep-mask of layer ``i``: top ``(1 - sparsity)`` of ``|s_i|``."""
        s = self.scores[str(i)].detach().abs()
        return _keep_top(s.reshape(-1), self.sparsity).reshape(s.shape)

    def weight(self, i: int, w: torch.Tensor) -> torch.Tensor:
        """``W * m(s)`` forward; straight-through gradient ``dL/dW_eff * W`` to the score."""
        s = self.scores[str(i)].abs()
        m = self.mask(i).to(w.dtype)
        return w.detach() * (m + s - s.detach())


class _ScoreNet(nn.Module):
    """Frozen model + trainable scores (only the scores are parameters the optimiser sees)."""

    def __init__(self, model: nn.Module, scores: HydraScores) -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        super().__init__()
        self.scores = scores
        self.net = ReparamNet(model, scores.weight)
        for p in model.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` in [0, 1] -> logits ``(N, K)``."""
        return self.net(x)


@TRANSFORMS.register("hydra", help="HYDRA: adversarial-loss importance scores, then adversarial fine-tuning")
class Hydra(Transform):
    """Args: ``sparsity`` in [0, 1); ``score_epochs``/``finetune_epochs`` (>= 1 / >= 0); ``task`` and
    ``task_args`` (robust objective, default ``pgd_at`` at ``linf:0.3``); ``config`` TrainConfig fields
    for the score phase (default Adam-free SGD lr 0.1, as in the paper); ``finetune_config``."""

    needs_data = True

    def __init__(self, sparsity: float = 0.9, score_epochs: int = 2, finetune_epochs: int = 1,
                 task: str = "pgd_at", task_args: Mapping[str, Any] | None = None,
                 config: Mapping[str, Any] | None = None, finetune_config: Mapping[str, Any] | None = None) -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        self.sparsity = check_fraction(sparsity, "sparsity")
        self.score_epochs = check_int(score_epochs, "score_epochs")
        self.finetune_epochs = check_int(finetune_epochs, "finetune_epochs", lo=0)
        self.task = task
        self.task_args = dict(task_args if task_args is not None else {"threat": "linf:0.3", "steps": 10})
        self.config, self.finetune_config = dict(config or {}), dict(finetune_config or {})

    def _run(self, model: nn.Module, example_inputs: torch.Tensor, data: Data | None) -> TransformResult:
        """Run the algorithm on ``model`` (the private deep copy) and return its result and report."""
        x, y = check_data(data)
        scores = HydraScores(model, self.sparsity)
        cfg = TrainConfig.from_dict({"lr": 0.1, "weight_decay": 0.0, "batch_size": 128, **self.config,
                                     "epochs": self.score_epochs})
        with train_mode(model):  # the copy trains as the Trainer would train it; requires_grad restored after
            hist = Trainer(_ScoreNet(model, scores), create_task(self.task, **self.task_args), cfg,
                           progress=False).fit((x, y))
        masks = {i: scores.mask(i) for i, _ in weight_layers(model)}
        apply_masks(model, masks)
        report: dict[str, Any] = {"sparsity": self.sparsity, "score_train_adv_acc": hist[-1].get("train_acc")}
        if self.finetune_epochs:
            ft = finetune(model, (x, y), task=self.task, task_args=self.task_args,
                          config={"lr": 0.01, **self.finetune_config, "epochs": self.finetune_epochs})
            report["finetune_train_acc"] = ft[-1].get("train_acc")
        nnz, total = count_params(model)
        report.update(params_nonzero=nnz, params_total=total)
        return TransformResult(model, report)


__all__ = ["Hydra", "HydraScores"]
