"""Adversarial training against several threat models at once (e.g. linf 0.3, l2 2.0, l1 10).

Modes (all share the in-graph inner loop of :mod:`fortify.train.adversarial.inner`):

* ``max`` - worst case over threats per sample (Tramer & Boneh 2019 "max" strategy): one PGD-K per
  threat, train on the one with the highest loss for each sample. Cost ``T * K * B``.
* ``avg`` - average of the T adversarial losses (Tramer & Boneh 2019 "avg"). Cost ``T * K * B``.
* ``msd`` - multi steepest descent (Maini et al. 2020): one attack that picks the best norm's step
  at every iteration. Cost ``K * B`` gradients (+ forward passes for the candidates).
* ``stochastic`` - one threat drawn per minibatch from the call's generator (stochastic adversarial
  training, Madaan et al. 2020 "Learning to generate noise for multi-attack robustness"), plus their
  adversarial consistency term: ``lambda * JS(p(x), p(x'))``, which keeps the label distribution of
  the clean and perturbed inputs consistent. (The learned noise generator of that paper is not
  included.) Cost ``K * B``.

Shapes: ``x (B, ...)``, ``y (B,)``; ``logits (B, C)`` of the inputs actually trained on.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fortify.errors import ConfigError
from fortify.threat import ThreatModel
from fortify.train.adversarial.base import AdversarialTask, parse_threat, positive
from fortify.train.adversarial.inner import ce_per_sample, msd_perturb
from fortify.train.tasks.base import TaskOutput
from fortify.train.tasks.registry import TASKS

MODES = ("max", "avg", "msd", "stochastic")


def js_divergence(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Mean Jensen-Shannon divergence between the softmax of two ``(B, C)`` logit tensors."""
    pa, pb = F.softmax(logits_a, dim=1), F.softmax(logits_b, dim=1)
    m = (0.5 * (pa + pb)).clamp_min(1e-12).log()
    return 0.5 * (F.kl_div(m, pa, reduction="batchmean") + F.kl_div(m, pb, reduction="batchmean"))


@TASKS.register("multi_perturbation", help="robust to several threats: max / avg / msd / stochastic (+consistency)")
class MultiPerturbation(AdversarialTask):
    """Multi-perturbation adversarial training.

    Args:
        threats: list of threat models, e.g. ``["linf:0.3", "l2:2.0", "l1:10"]``.
        mode: one of ``max``, ``avg``, ``msd``, ``stochastic``.
        steps: attack steps per threat (K).
        consistency: weight of the JS label-consistency term (used by ``stochastic``; 0 = off).
        schedule: adaptive-strength schedule; its eps factor scales every threat.
    """

    def __init__(self, threats: Sequence[object] = ("linf:0.3", "l2:2.0", "l1:10"), mode: str = "msd",
                 steps: int = 10, schedule: object = None, consistency: float = 1.0,
                 monitor: object = True, co_guard: object = False) -> None:
        if isinstance(threats, (str, ThreatModel)) or not isinstance(threats, Sequence) or not threats:
            raise ConfigError(f"threats must be a non-empty list like ['linf:0.3', 'l2:2.0'], got {threats!r}")
        parsed = [parse_threat(t) for t in threats]
        super().__init__(parsed[0], steps, None, schedule, monitor=monitor, co_guard=co_guard)
        self.threats = parsed
        if mode not in MODES:
            raise ConfigError(f"unknown multi_perturbation mode {mode!r}; allowed: {', '.join(MODES)}")
        self.mode = mode
        self.consistency = positive(consistency, "consistency", allow_zero=True)

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator | None) -> TaskOutput:
        loss_fn = ce_per_sample(y)
        extra: dict[str, float | torch.Tensor] = {}
        if self.mode == "msd":
            ts = [self.current_threat(t) for t in self.threats]
            k = self.current_steps()
            x_adv, evals = msd_perturb(model, x, y, ts, steps=k, generator=generator)
            logits = model(x_adv)
            loss = F.cross_entropy(logits, y)
        elif self.mode == "stochastic":
            i = int(torch.randint(len(self.threats), (1,), generator=generator))
            x_adv, evals = self.attack(model, x, loss_fn, threat=self.threats[i], generator=generator)
            logits = model(x_adv)
            loss = F.cross_entropy(logits, y)
            if self.consistency > 0:
                js = js_divergence(model(x), logits)
                loss = loss + self.consistency * js
                extra["consistency"] = float(js.detach())
            extra["threat_index"] = i
        else:
            advs, evals = [], 0
            for t in self.threats:
                xa, e = self.attack(model, x, loss_fn, threat=t, generator=generator)
                advs.append(xa)
                evals += e
            all_logits = [model(xa) for xa in advs]
            losses = torch.stack([F.cross_entropy(lg, y, reduction="none") for lg in all_logits])  # (T, B)
            if self.mode == "avg":
                loss = losses.mean()
                logits = all_logits[int(losses.mean(dim=1).argmax())]
            else:
                worst = losses.detach().argmax(dim=0)  # (B,)
                loss = losses.gather(0, worst[None]).mean()
                stacked = torch.stack(all_logits)  # (T, B, C)
                logits = stacked.gather(0, worst[None, :, None].expand(1, *stacked.shape[1:])).squeeze(0)
        return self.output(loss, logits, y, evals, **extra)

    def __repr__(self) -> str:
        return (f"MultiPerturbation(threats={[str(t) for t in self.threats]}, mode={self.mode!r}, "
                f"steps={self.steps}, consistency={self.consistency}, schedule={self.schedule!r})")


