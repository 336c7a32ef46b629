"""Low-curvature training (Srinivas et al. 2022, "Efficient training of low-curvature neural
networks"): penalise the input-gradient norm and the curvature of the loss surface so that the
loss is close to linear inside the threat set, which makes one-step attacks faithful and the
model robust without an inner maximisation.

``loss = CE(f(x), y) + grad_weight * mean ||grad_x CE||_2^2
        + curvature_weight * mean ||grad_x CE(x + h d) - grad_x CE(x)||_2^2 / h^2``

with ``d`` the normalised gradient sign (the finite-difference curvature estimate of CURE,
Moosavi-Dezfooli et al. 2019). Optionally (``adversarial=True``) the inputs are first moved by an
FGSM-RS step (so the penalties act where attacks look). The architectural part of the paper
(centered softplus, spectrally normalised layers) is a model choice, not part of this task.
Shapes: ``x (B, ...)``, ``y (B,)``; ``logits (B, C)`` of the inputs trained on.
Cost: ``B`` (gradient norm) ``+ B`` (curvature) ``[+ B]`` (FGSM-RS) input-gradient evaluations.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fortify.errors import ConfigError
from fortify.train.adversarial.base import AdversarialTask, positive
from fortify.train.adversarial.inner import ce_per_sample
from fortify.train.adversarial.penalties import curvature, input_grad_norm
from fortify.train.tasks.base import TaskOutput
from fortify.train.tasks.registry import TASKS


@TASKS.register("low_curvature", help="gradient-norm + curvature penalty (Srinivas et al. 2022)")
class LowCurvature(AdversarialTask):
    """Low-curvature training.

    Args:
        threat: threat model; its eps is the default finite-difference length ``h`` and the FGSM radius.
        grad_weight: weight of the squared input-gradient norm (>= 0).
        curvature_weight: weight of the curvature estimate (>= 0).
        h: finite-difference length in input space (default: eps of the threat).
        adversarial: train on FGSM-RS inputs instead of clean ones.
        schedule: adaptive-strength schedule (scales eps and so ``h``).
    """

    def __init__(self, threat: object = "linf:0.3", grad_weight: float = 1.0, curvature_weight: float = 1.0,
                 h: float | None = None, adversarial: bool = False, schedule: object = None,
                 monitor: object = True, co_guard: object = False) -> None:
        super().__init__(threat, 1, None, schedule, monitor=monitor, co_guard=co_guard)
        self.grad_weight = positive(grad_weight, "grad_weight", allow_zero=True)
        self.curvature_weight = positive(curvature_weight, "curvature_weight", allow_zero=True)
        if self.grad_weight == 0 and self.curvature_weight == 0:
            raise ConfigError("low_curvature needs grad_weight > 0 or curvature_weight > 0")
        self.h = None if h is None else positive(h, "h")
        self.adversarial = bool(adversarial)

    def current_steps(self) -> int:
        return 1

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator | None) -> TaskOutput:
        evals = 0
        inputs = x
        if self.adversarial:
            inputs, evals = self.attack(model, x, ce_per_sample(y), steps=1, generator=generator)
        logits = model(inputs)
        loss = F.cross_entropy(logits, y)
        pen, g = input_grad_norm(model, inputs, y)
        evals += inputs.shape[0]
        extra: dict[str, float | torch.Tensor] = {"grad_norm2": float(pen.detach())}
        if self.grad_weight > 0:
            loss = loss + self.grad_weight * pen
        if self.curvature_weight > 0:
            h = self.h if self.h is not None else max(self.current_threat().eps, 1e-3)
            curv = curvature(model, inputs, y, h, grad=g)
            evals += inputs.shape[0]
            loss = loss + self.curvature_weight * curv
            extra["curvature"] = float(curv.detach())
        return self.output(loss, logits, y, evals, **extra)
