"""Knowledge distillation with Jacobian matching (Srinivas & Fleuret 2018, "Knowledge transfer with
Jacobian matching", ICML).

``L = KD + beta || J_s / ||J_s||_2 - J_t / ||J_t||_2 ||_2^2`` where ``J = d z_y / d x`` ``(B, ...)``
is the input gradient of the true-class logit (the student's computed with ``create_graph`` so the
penalty trains it). The teacher runs frozen (eval mode, no parameter gradients, flags restored).
Cost per step: one teacher forward+input-backward, one student double-backward.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from fortify.models.state import frozen
from fortify.train.adversarial.base import positive
from fortify.train.tasks.base import Task, TaskOutput
from fortify.train.tasks.kd import check_teacher, kd_loss, mixing_weight
from fortify.train.tasks.registry import TASKS


def class_jacobian(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(B, K)`` and ``d z_y / d x`` ``(B, ...)`` (per-sample input gradient of the true logit)."""
    xg = x.detach().requires_grad_(True)
    logits = model(xg)
    (j,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), xg, create_graph=create_graph)
    return logits, j


@TASKS.register("jacobian_kd", help="KD with Jacobian matching (Srinivas & Fleuret 2018)")
class JacobianKDTask(Task):
    """Args: ``teacher``, ``temperature``, ``alpha`` (KD weight), ``beta`` >= 0 (Jacobian term weight)."""

    def __init__(self, teacher: nn.Module | None = None, temperature: float = 4.0, alpha: float = 0.9,
                 beta: float = 1.0) -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        super().__init__()
        self.teacher = check_teacher(teacher)
        self.temperature = positive(temperature, "temperature")
        self.alpha = mixing_weight(alpha)
        self.beta = positive(beta, "beta", allow_zero=True)

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator | None) -> TaskOutput:
        """``x (B, ...)``, ``y (B,)`` -> loss, logits ``(B, K)`` and the Jacobian term."""
        with torch.enable_grad():
            with frozen(self.teacher):
                t, jt = class_jacobian(self.teacher, x, y, create_graph=False)
            s, js = class_jacobian(model, x, y, create_graph=True)
        jt, js = jt.flatten(1), js.flatten(1)
        jac = (js / js.norm(dim=1, keepdim=True).clamp_min(1e-12) - jt / jt.norm(dim=1, keepdim=True).clamp_min(1e-12))
        jac_loss = jac.pow(2).sum(1).mean()
        loss = (self.alpha * kd_loss(s, t.detach(), self.temperature) + (1 - self.alpha) * F.cross_entropy(s, y)
                + self.beta * jac_loss)
        return TaskOutput(loss, s.detach(), {"jacobian_loss": jac_loss.detach()})


__all__ = ["JacobianKDTask", "class_jacobian"]
