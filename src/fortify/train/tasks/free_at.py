"""Free adversarial training (Shafahi et al. 2019, "Adversarial training for free!").

Each minibatch is replayed ``m`` times (``self.replays``; the Trainer steps it ``m`` times in a
row). One backward pass gives both the parameter gradient and the input gradient: the input
gradient is captured by a tensor hook during the Trainer's own ``loss.backward()`` and used at the
next call to update the persistent perturbation ``delta <- Proj(delta + eps * sign(g))``, which is
carried over from replay to replay and from minibatch to minibatch, as in the paper. No extra
gradient evaluations are spent: ``grad_evals`` counts the ``B`` input gradients that come free
with the training backward.

Shapes: ``x (B, ...)``, ``y (B,)``; ``delta`` has the shape of the largest batch seen (a smaller
last batch uses its leading rows). ``delta`` and the pending input gradient are task state, so
resume is exact.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fortify.attacks.steps import steepest_ascent
from fortify.errors import ConfigError
from fortify.train.adversarial.base import AdversarialTask
from fortify.train.tasks.base import TaskOutput
from fortify.train.tasks.registry import TASKS


@TASKS.register("free_at", help="free adversarial training with minibatch replay (Shafahi et al. 2019)")
class FreeAT(AdversarialTask):
    """Free-AT.

    Args:
        threat: threat model (``"linf:0.3"``).
        replays: ``m``, times each minibatch is replayed (>= 2 for free AT; 1 is FGSM-like with a
            carried-over start).
        step_ratio: perturbation step as a fraction of eps (1.0 in the paper).
        schedule: adaptive-strength schedule (eps part only; there are no attack steps).
    """

    def __init__(self, threat: object = "linf:0.3", replays: int = 4, step_ratio: float = 1.0,
                 schedule: object = None,
                 monitor: object = True, co_guard: object = False) -> None:
        super().__init__(threat, 1, step_ratio, schedule, monitor=monitor, co_guard=co_guard)
        if isinstance(replays, bool) or not isinstance(replays, int) or replays < 1:
            raise ConfigError(f"replays must be an integer >= 1, got {replays!r}")
        self.replays = replays
        self._delta: torch.Tensor | None = None
        self._grad: torch.Tensor | None = None

    def current_steps(self) -> int:
        return 1

    def _capture(self, g: torch.Tensor) -> None:
        self._grad = g.detach().clone()

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator | None) -> TaskOutput:
        t = self.current_threat()
        b = x.shape[0]
        if self._delta is None or self._delta.shape[1:] != x.shape[1:] or self._delta.shape[0] < b:
            self._delta, self._grad = torch.zeros_like(x), None
        self._delta = self._delta.to(x.device)
        z = x + self._delta[:b]
        if self._grad is not None and self._grad.shape[0] >= b:
            # ascent step with the input gradient captured by the previous backward
            z = z + self.step_size(t, 1) * steepest_ascent(self._grad.to(x.device)[:b], t.norm)
        self._grad = None
        x_adv = t.project(z, x).detach()
        new = self._delta.clone()
        new[:b] = x_adv - x
        self._delta = new
        x_adv.requires_grad_(True)
        if torch.is_grad_enabled():
            x_adv.register_hook(self._capture)
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        return self.output(loss, logits, y, b)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "delta": self._delta, "grad": self._grad}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._delta = None if state.get("delta") is None else state["delta"].clone()
        self._grad = None if state.get("grad") is None else state["grad"].clone()
