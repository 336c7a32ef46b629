"""Importance-allocated adversarial training: spend the attack budget on the hard examples.

Most of a PGD-K budget is wasted on two kinds of points: those a single step already breaks, and
those far from any boundary. This task runs a cheap FGSM-RS step for the whole batch (Wong et al.
2020), then gives the remaining ``K - 1`` PGD steps only to the hardest ``fraction`` of the batch:
the points the cheap attack did *not* break, ranked by the smallest adversarial margin
``z_y - max_{j != y} z_j`` (closest to the boundary, where a stronger attack most often finds a
worse point; cf. the example-dependent budgets of MMA training, Ding et al. 2020, and the
early-stopped attacks of Zhang et al. 2020 "Attacks which do not kill training"). Training uses
the union of both sets of adversarial inputs.

Shapes: ``x (B, ...)``, ``y (B,)``; ``logits (B, C)`` of the adversarial inputs.
Cost: ``B + ceil(fraction * B) * (K - 1)`` input-gradient evaluations (at most), against ``K * B``
for PGD-K.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fortify.errors import ConfigError
from fortify.models.state import eval_mode
from fortify.train.adversarial.base import AdversarialTask
from fortify.train.adversarial.inner import ce_per_sample
from fortify.train.tasks.base import TaskOutput
from fortify.train.tasks.registry import TASKS


@TASKS.register("importance", help="FGSM-RS for all, PGD-K only for the hardest fraction of the batch")
class ImportanceAT(AdversarialTask):
    """Budget-allocating adversarial training.

    Args:
        threat, steps, step_ratio, schedule: see :class:`AdversarialTask` (``steps`` is K for the hard set).
        fraction: share of the batch (0, 1] that gets the full K-step attack.
    """

    def __init__(self, threat: object = "linf:0.3", steps: int = 10, step_ratio: float | None = None,
                 schedule: object = None, fraction: float = 0.3,
                 monitor: object = True, co_guard: object = False) -> None:
        super().__init__(threat, steps, step_ratio, schedule, monitor=monitor, co_guard=co_guard)
        try:
            f = float(fraction)
        except (TypeError, ValueError):
            raise ConfigError(f"fraction must be a number in (0, 1], got {fraction!r}") from None
        if not (0 < f <= 1):
            raise ConfigError(f"fraction must be in (0, 1], got {fraction!r}")
        self.fraction = f

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator | None) -> TaskOutput:
        """Loss, adversarial logits ``(B, C)`` and ``hard_fraction`` of one minibatch ``x (B, ...)``, ``y (B,)``.

        The hard set is ranked in eval mode (every module's flag restored afterwards).
        """
        b = x.shape[0]
        x_adv, evals = self.attack(model, x, ce_per_sample(y), steps=1, generator=generator)
        k = self.current_steps()
        n_hard = 0
        if k > 1:
            with torch.no_grad(), eval_mode(model):
                z = model(x_adv)
            true = z.gather(1, y[:, None]).squeeze(1)
            margin = true - z.scatter(1, y[:, None], float("-inf")).amax(dim=1)
            margin = torch.where(margin > 0, margin, torch.full_like(margin, float("inf")))  # broken: skip
            budget = min(int(math.ceil(self.fraction * b)), int((margin < float("inf")).sum()))
            if budget > 0:
                hard = margin.topk(budget, largest=False).indices
                refined, e2 = self.attack(model, x[hard], ce_per_sample(y[hard]), steps=k - 1,
                                          random_start=False, x_init=x_adv[hard], generator=generator)
                x_adv = x_adv.clone()
                x_adv[hard] = refined
                evals += e2
                n_hard = budget
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        return self.output(loss, logits, y, evals, hard_fraction=n_hard / b)
