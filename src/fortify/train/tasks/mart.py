"""MART (Wang et al. 2020, "Improving adversarial robustness requires revisiting misclassified
examples").

``loss = BCE(p(x'), y) + beta * mean_i KL(p(x_i) || p(x'_i)) * (1 - p_y(x_i))`` where the boosted
cross-entropy ``BCE = -log p_y(x') - log(1 - max_{k != y} p_k(x'))`` and ``x'`` is a PGD-K
(cross-entropy) adversarial example. Misclassified clean examples (small ``p_y(x)``) get a larger
weight on the consistency term. Shapes: ``x (B, ...)``, ``y (B,)``; ``logits (B, C)`` of ``x'``.
Cost: ``K * B`` input-gradient evaluations per step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fortify.train.adversarial.base import AdversarialTask, positive
from fortify.train.adversarial.inner import ce_per_sample
from fortify.train.tasks.base import TaskOutput
from fortify.train.tasks.registry import TASKS

_TINY = 1e-12


@TASKS.register("mart", help="MART: boosted CE + misclassification-aware KL (Wang et al. 2020)")
class MART(AdversarialTask):
    """MART. Args: see :class:`AdversarialTask`; ``beta > 0`` weights the KL term (6 in the paper)."""

    def __init__(self, threat: object = "linf:0.3", steps: int = 10, step_ratio: float | None = None,
                 schedule: object = None, beta: float = 6.0,
                 monitor: object = True, co_guard: object = False) -> None:
        super().__init__(threat, steps, step_ratio, schedule, monitor=monitor, co_guard=co_guard)
        self.beta = positive(beta, "beta")

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator | None) -> TaskOutput:
        x_adv, evals = self.attack(model, x, ce_per_sample(y), generator=generator)
        logits_adv = model(x_adv)
        logits_clean = model(x)
        p_adv = F.softmax(logits_adv, dim=1)
        p_clean = F.softmax(logits_clean, dim=1)
        # boosted CE: true-class CE + margin term on the most likely wrong class
        others = p_adv.scatter(1, y[:, None], 0.0)
        top_wrong = others.amax(dim=1)
        bce = F.cross_entropy(logits_adv, y) - torch.log((1.0 - top_wrong).clamp_min(_TINY)).mean()
        kl = (p_clean * (torch.log(p_clean.clamp_min(_TINY)) - F.log_softmax(logits_adv, dim=1))).sum(dim=1)
        true_prob = p_clean.gather(1, y[:, None]).squeeze(1)
        robust = (kl * (1.0 - true_prob)).mean()
        loss = bce + self.beta * robust
        return self.output(loss, logits_adv, y, evals, bce=float(bce.detach()), weighted_kl=float(robust.detach()))
