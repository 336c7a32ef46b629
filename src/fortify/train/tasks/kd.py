"""Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the knowledge in a neural network").

``L = alpha KL_T(s(x), t(x)) + (1 - alpha) CE(s(x), y)`` with student logits ``s(x)``, teacher logits
``t(x)`` (both ``(B, K)``), temperature ``T`` and ``KL_T(a, b) = T^2 KL(softmax(b/T) || softmax(a/T))``.
The teacher is run under :func:`fortify.models.state.frozen` (eval mode, no parameter gradients,
its flags restored afterwards): the task never changes the teacher it was given.
Cost per step: one teacher and one student forward pass, one student backward pass.
The helpers here (:func:`kd_loss`, :func:`check_teacher`, :func:`mixing_weight`) are shared with
the ``ard`` and ``jacobian_kd`` tasks. The ``distill`` transform (:mod:`fortify.compress.distill`)
trains a student with any of the three.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from fortify.errors import ConfigError
from fortify.models.state import frozen
from fortify.train.adversarial.base import positive
from fortify.train.tasks.base import Task, TaskOutput
from fortify.train.tasks.registry import TASKS


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 KL(softmax(t/T) || softmax(s/T))``, batch mean; logits ``(B, K)`` -> scalar."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="batchmean",
                    log_target=True) * t * t


def check_teacher(teacher: object) -> nn.Module:
    """The teacher module as given (never switched to eval here); ConfigError if it is not a module."""
    if not isinstance(teacher, nn.Module):
        raise ConfigError(f"distillation needs teacher=<nn.Module>, got {type(teacher).__name__}")
    return teacher


def mixing_weight(alpha: object) -> float:
    """A mixing weight in [0, 1]; ConfigError otherwise."""
    a = positive(alpha, "alpha", allow_zero=True)
    if a > 1:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha!r}")
    return a


def teacher_logits(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Teacher logits ``(B, K)`` of ``x (B, ...)``: eval mode, no graph, the teacher's flags restored."""
    with frozen(teacher), torch.no_grad():
        return teacher(x)


@TASKS.register("kd", help="knowledge distillation (Hinton et al. 2015)")
class KDTask(Task):
    """Args: ``teacher`` (module, never modified), ``temperature`` > 0, ``alpha`` in [0, 1]."""

    def __init__(self, teacher: nn.Module | None = None, temperature: float = 4.0, alpha: float = 0.9) -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        super().__init__()
        self.teacher = check_teacher(teacher)
        self.temperature = positive(temperature, "temperature")
        self.alpha = mixing_weight(alpha)

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator | None) -> TaskOutput:
        """``x (B, ...)``, ``y (B,)`` -> loss (scalar) and logits ``(B, K)`` (see the module docstring); no randomness."""
        t = teacher_logits(self.teacher, x)
        s = model(x)
        loss = self.alpha * kd_loss(s, t, self.temperature) + (1 - self.alpha) * F.cross_entropy(s, y)
        return TaskOutput(loss, s)


__all__ = ["KDTask", "check_teacher", "kd_loss", "mixing_weight", "teacher_logits"]
