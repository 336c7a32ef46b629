"""PGD adversarial training (Madry et al. 2018, "Towards deep learning models resistant to
adversarial attacks").

``min_theta E[max_{x' in S(x)} CE(f(x'), y)]``: each step runs K steps of projected steepest ascent
from a random start (the shared in-graph loop of :mod:`fortify.train.adversarial.inner`) and
trains on the result. Optionally mixes in the clean loss with weight ``clean_weight``.
Shapes: ``x (B, ...)``, ``y (B,)``; output ``logits (B, C)`` are those of the adversarial inputs.
Cost: ``K * B`` input-gradient evaluations per step (reported as ``grad_evals``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fortify.train.adversarial.base import AdversarialTask, positive
from fortify.train.adversarial.inner import ce_per_sample
from fortify.train.tasks.base import TaskOutput
from fortify.train.tasks.registry import TASKS


@TASKS.register("pgd_at", help="PGD adversarial training (Madry et al. 2018)")
class PGDAT(AdversarialTask):
    """Madry PGD-AT. Args: see :class:`AdversarialTask`; ``clean_weight`` in [0, 1) mixes in clean CE."""

    def __init__(self, threat: object = "linf:0.3", steps: int = 10, step_ratio: float | None = None,
                 schedule: object = None, clean_weight: float = 0.0,
                 monitor: object = True, co_guard: object = False) -> None:
        super().__init__(threat, steps, step_ratio, schedule, monitor=monitor, co_guard=co_guard)
        self.clean_weight = positive(clean_weight, "clean_weight", allow_zero=True)

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator | None) -> TaskOutput:
        x_adv, evals = self.attack(model, x, ce_per_sample(y), generator=generator)
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        if self.clean_weight > 0:
            loss = (1 - self.clean_weight) * loss + self.clean_weight * F.cross_entropy(model(x), y)
        return self.output(loss, logits, y, evals)
