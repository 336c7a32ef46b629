"""Adversarially robust distillation (Goldblum, Fowl, Feizi & Goldstein 2020, "Adversarially robust
distillation", AAAI).

The student is trained on ``x' = argmax_{x' in S(x)} KL(s(x'), t(x))`` (PGD, the shared in-graph
loop of :class:`fortify.train.adversarial.AdversarialTask`) to match the robust teacher's *clean*
output: ``L = alpha KL_T(s(x'), t(x)) + (1 - alpha) CE(s(x), y)``. Logits ``(B, K)``; the teacher
runs frozen (flags restored). Cost per step: ``steps * B`` student input-gradient evaluations plus
one teacher forward pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fortify.train.adversarial.base import AdversarialTask, positive
from fortify.train.tasks.base import TaskOutput
from fortify.train.tasks.kd import check_teacher, kd_loss, mixing_weight, teacher_logits
from fortify.train.tasks.registry import TASKS


@TASKS.register("ard", help="adversarially robust distillation (Goldblum et al. 2020)")
class ARDTask(AdversarialTask):
    """Args: ``teacher``, ``threat``/``steps``/``step_ratio`` of the inner PGD, ``temperature``, ``alpha``."""

    def __init__(self, teacher: nn.Module | None = None, threat: object = "linf:0.3", steps: int = 10,
                 step_ratio: float | None = None, temperature: float = 30.0, alpha: float = 0.95) -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        super().__init__(threat, steps, step_ratio)
        self.teacher = check_teacher(teacher)
        self.temperature = positive(temperature, "temperature")
        self.alpha = mixing_weight(alpha)

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator | None) -> TaskOutput:
        """``x (B, ...)``, ``y (B,)`` -> loss, adversarial logits ``(B, K)`` and attack metrics."""
        t = teacher_logits(self.teacher, x)
        t_log = F.log_softmax(t, 1)
        x_adv, evals = self.attack(
            model, x, lambda logits: F.kl_div(F.log_softmax(logits, 1), t_log, reduction="none", log_target=True).sum(1),
            generator=generator)
        s_adv = model(x_adv)
        loss = self.alpha * kd_loss(s_adv, t, self.temperature) + (1 - self.alpha) * F.cross_entropy(model(x), y)
        return self.output(loss, s_adv, y, evals)


__all__ = ["ARDTask"]
