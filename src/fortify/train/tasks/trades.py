"""TRADES (Zhang et al. 2019, "Theoretically principled trade-off between robustness and accuracy").

``loss = CE(f(x), y) + beta * KL(p(x) || p(x'))`` with ``x'`` maximising the KL term inside the
threat set (K steps of the shared inner loop, started at ``x + 0.001 * N(0, I)`` as in the
reference code, clipped to the threat model's input box). ``beta`` trades clean accuracy for robustness (6 in the paper; 1/lambda).
Shapes: ``x (B, ...)``, ``y (B,)``; ``logits (B, C)`` of the adversarial inputs.
Cost: ``K * B`` input-gradient evaluations per step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fortify.models.state import eval_mode
from fortify.train.adversarial.base import AdversarialTask, positive
from fortify.train.adversarial.inner import kl_per_sample
from fortify.train.tasks.base import TaskOutput
from fortify.train.tasks.registry import TASKS

#: scale of the Gaussian start of the TRADES inner maximisation (reference implementation)
START_STD = 1e-3


@TASKS.register("trades", help="TRADES: CE + beta * KL(clean || adversarial) (Zhang et al. 2019)")
class TRADES(AdversarialTask):
    """TRADES. Args: see :class:`AdversarialTask`; ``beta > 0`` weights the robustness term."""

    def __init__(self, threat: object = "linf:0.3", steps: int = 10, step_ratio: float | None = None,
                 schedule: object = None, beta: float = 6.0,
                 monitor: object = True, co_guard: object = False) -> None:
        super().__init__(threat, steps, step_ratio, schedule, monitor=monitor, co_guard=co_guard)
        self.beta = positive(beta, "beta")

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator | None) -> TaskOutput:
        """Loss, adversarial logits ``(B, C)`` and metrics of one minibatch ``x (B, ...)``, ``y (B,)``.

        The clean reference of the inner KL is computed in eval mode (every module's flag restored).
        """
        with torch.no_grad(), eval_mode(model):
            clean_ref = model(x)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * START_STD
        x_adv, evals = self.attack(model, x, kl_per_sample(clean_ref), x_init=self.threat.clip_bounds(x + noise),
                                   generator=generator)
        logits_clean = model(x)
        logits_adv = model(x_adv)
        natural = F.cross_entropy(logits_clean, y)
        robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")
        loss = natural + self.beta * robust
        return self.output(loss, logits_adv, y, evals, natural=float(natural.detach()),
                           robust_kl=float(robust.detach()))
