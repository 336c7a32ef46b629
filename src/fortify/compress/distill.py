"""Knowledge distillation into a smaller student: standard KD, ARD and Jacobian matching.

Registered as training tasks (so :class:`fortify.train.Trainer` runs them) and as the transform
``distill``. Notation: student ``s(x)``, teacher ``t(x)`` logits ``(B, K)``, temperature ``T``,
``KL_T(a, b) = T^2 KL(softmax(b/T) || softmax(a/T))``.

* ``kd`` -- Hinton, Vinyals & Dean 2015, "Distilling the knowledge in a neural network":
  ``L = alpha KL_T(s(x), t(x)) + (1 - alpha) CE(s(x), y)``.
* ``ard`` -- Goldblum, Fowl, Feizi & Goldstein 2020, "Adversarially robust distillation": the
  student is trained on ``x' = argmax_{x' in S(x)} KL(s(x'), t(x))`` (PGD) to match the robust
  teacher's *clean* output: ``L = alpha KL_T(s(x'), t(x)) + (1 - alpha) CE(s(x), y)``.
* ``jacobian_kd`` -- Srinivas & Fleuret 2018, "Knowledge transfer with Jacobian matching":
  ``L = KD + beta || J_s / ||J_s||_2 - J_t / ||J_t||_2 ||_2^2`` where ``J = d z_y / d x``
  ``(B, C, H, W)`` is the input gradient of the true-class logit (computed with ``create_graph``).
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fortify.compress.base import TRANSFORMS, Data, Transform, TransformResult, check_data, check_int, count_params
from fortify.errors import ConfigError
from fortify.models import Normalized, create
from fortify.train import Trainer, TrainConfig
from fortify.train.adversarial.base import AdversarialTask, positive
from fortify.train.tasks import TASKS, Task


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 KL(softmax(t/T) || softmax(s/T))``, batch mean; logits ``(B, K)``."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="batchmean",
                    log_target=True) * t * t


def _check_teacher(teacher: object) -> nn.Module:
    """The teacher module, put in eval mode; ConfigError if it is not a module."""
    if not isinstance(teacher, nn.Module):
        raise ConfigError(f"distillation needs teacher=<nn.Module>, got {type(teacher).__name__}")
    return teacher.eval()


def _alpha(alpha: object) -> float:
    """A mixing weight in [0, 1]; ConfigError otherwise."""
    a = positive(alpha, "alpha", allow_zero=True)
    if a > 1:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha!r}")
    return a


@TASKS.register("kd", help="knowledge distillation (Hinton et al. 2015)")
class KDTask(Task):
    """Args: ``teacher`` (module, frozen), ``temperature`` > 0, ``alpha`` in [0, 1]."""

    name = "kd"

    def __init__(self, teacher: nn.Module | None = None, temperature: float = 4.0, alpha: float = 0.9) -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        super().__init__()
        self.teacher = _check_teacher(teacher)
        self.temperature = positive(temperature, "temperature")
        self.alpha = _alpha(alpha)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """Loss and logits of one minibatch ``x (B, C, H, W)``, ``y (B,)`` (see the class docstring)."""
        with torch.no_grad():
            t = self.teacher(x)
        s = model(x)
        loss = self.alpha * kd_loss(s, t, self.temperature) + (1 - self.alpha) * F.cross_entropy(s, y)
        return {"loss": loss, "logits": s}


@TASKS.register("ard", help="adversarially robust distillation (Goldblum et al. 2020)")
class ARDTask(AdversarialTask):
    """Args: ``teacher``, ``threat``/``steps``/``step_ratio`` of the inner PGD, ``temperature``, ``alpha``."""

    name = "ard"

    def __init__(self, teacher: nn.Module | None = None, threat: object = "linf:0.3", steps: int = 10,
                 step_ratio: float | None = None, temperature: float = 30.0, alpha: float = 0.95) -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        super().__init__(threat, steps, step_ratio)
        self.teacher = _check_teacher(teacher)
        self.temperature = positive(temperature, "temperature")
        self.alpha = _alpha(alpha)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """Loss and logits of one minibatch ``x (B, C, H, W)``, ``y (B,)`` (see the class docstring)."""
        with torch.no_grad():
            t = self.teacher(x)
        t_log = F.log_softmax(t, 1)
        x_adv, evals = self.attack(
            model, x, lambda logits: F.kl_div(F.log_softmax(logits, 1), t_log, reduction="none", log_target=True).sum(1))
        s_adv = model(x_adv)
        loss = self.alpha * kd_loss(s_adv, t, self.temperature) + (1 - self.alpha) * F.cross_entropy(model(x), y)
        return self.output(loss, s_adv, y, evals)


def _class_jacobian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(B, K)`` and ``d z_y / d x`` ``(B, ...)`` (per-sample input gradient of the true logit)."""
    xg = x.detach().requires_grad_(True)
    logits = model(xg)
    (j,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), xg, create_graph=create_graph)
    return logits, j


@TASKS.register("jacobian_kd", help="KD with Jacobian matching (Srinivas & Fleuret 2018)")
class JacobianKDTask(Task):
    """Args: ``teacher``, ``temperature``, ``alpha`` (KD weight), ``beta`` >= 0 (Jacobian term weight)."""

    name = "jacobian_kd"

    def __init__(self, teacher: nn.Module | None = None, temperature: float = 4.0, alpha: float = 0.9,
                 beta: float = 1.0) -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        super().__init__()
        self.teacher = _check_teacher(teacher)
        self.temperature = positive(temperature, "temperature")
        self.alpha = _alpha(alpha)
        self.beta = positive(beta, "beta", allow_zero=True)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """Loss and logits of one minibatch ``x (B, C, H, W)``, ``y (B,)`` (see the class docstring)."""
        with torch.enable_grad():
            t, jt = _class_jacobian(self.teacher, x, y, create_graph=False)
            s, js = _class_jacobian(model, x, y, create_graph=True)
        jt, js = jt.flatten(1), js.flatten(1)
        jac = (js / js.norm(dim=1, keepdim=True).clamp_min(1e-12) - jt / jt.norm(dim=1, keepdim=True).clamp_min(1e-12))
        jac_loss = jac.pow(2).sum(1).mean()
        loss = (self.alpha * kd_loss(s, t.detach(), self.temperature) + (1 - self.alpha) * F.cross_entropy(s, y)
                + self.beta * jac_loss)
        return {"loss": loss, "logits": s.detach(), "jacobian_loss": jac_loss.detach()}


METHODS = ("kd", "ard", "jacobian_kd")


@TRANSFORMS.register("distill", help="distil the model into a smaller student (KD, ARD, Jacobian matching)")
class Distill(Transform):
    """Args: ``student`` (registry name, built with the teacher's in_shape/num_classes/normalisation)
    and ``student_args`` (widths), or a student ``nn.Module``; ``method`` in :data:`METHODS`;
    ``method_args`` (temperature, alpha, threat, ...); ``epochs``; ``config`` (TrainConfig fields)."""

    name = "distill"
    needs_data = True

    def __init__(self, student: str | nn.Module = "small-cnn", student_args: Mapping[str, Any] | None = None,
                 method: str = "kd", method_args: Mapping[str, Any] | None = None, epochs: int = 2,
                 config: Mapping[str, Any] | None = None) -> None:
        """Validate and store the hyper-parameters (ConfigError naming the bad one)."""
        if method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
        self.student, self.student_args = student, dict(student_args or {})
        self.method, self.method_args = method, dict(method_args or {})
        TASKS.check_kwargs(method, {"teacher": None, **self.method_args})  # ConfigError naming the allowed keys
        self.epochs, self.config = check_int(epochs, "epochs"), dict(config or {})

    def _student(self, teacher: nn.Module, example_inputs: torch.Tensor) -> nn.Module:
        """A fresh student: the registry architecture with the teacher's input shape, classes and normalisation."""
        if isinstance(self.student, nn.Module):
            return copy.deepcopy(self.student)
        with torch.no_grad():
            k = int(teacher(example_inputs[:1]).shape[1])
        net = create(self.student, in_shape=tuple(example_inputs.shape[1:]), num_classes=k, **self.student_args)
        if isinstance(teacher, Normalized):
            net = Normalized(net, teacher.mean.flatten(), teacher.std.flatten())
        return net

    def _apply(self, model: nn.Module, example_inputs: torch.Tensor, data: Data | None) -> TransformResult:
        """Run the algorithm on ``model`` (the private deep copy) and return its result and report."""
        x, y = check_data(data)
        model.eval()
        student = self._student(model, example_inputs)
        task = TASKS.create(self.method, teacher=model, **self.method_args)
        cfg = TrainConfig.from_dict({"lr": 0.05, "batch_size": 128, **self.config, "epochs": self.epochs})
        hist = Trainer(student, task, cfg, progress=False).fit((x, y))
        return TransformResult(student.eval(), {"method": self.method, "teacher_params": count_params(model)[1],
                                                "params_total": count_params(student)[1],
                                                "train_acc": hist[-1].get("train_acc")})


__all__ = ["ARDTask", "Distill", "JacobianKDTask", "KDTask", "METHODS", "kd_loss"]
