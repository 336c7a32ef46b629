"""Knowledge distillation into a smaller student: standard KD, ARD and Jacobian matching.

The transform ``distill`` trains a fresh student with one of three training tasks, registered in
:data:`fortify.train.tasks.TASKS` like every other task (``fortify/train/tasks/kd.py``, ``ard.py``,
``jacobian_kd.py``; re-exported here). Notation: student ``s(x)``, teacher ``t(x)`` logits
``(B, K)``, temperature ``T``, ``KL_T(a, b) = T^2 KL(softmax(b/T) || softmax(a/T))``.

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
from torch import nn

from fortify.compress.base import TRANSFORMS, Data, Transform, TransformResult, check_data, check_int, count_params
from fortify.errors import ConfigError
from fortify.models import Normalized, create
from fortify.train import Trainer, TrainConfig
from fortify.train.tasks import TASKS
from fortify.train.tasks.ard import ARDTask
from fortify.train.tasks.jacobian_kd import JacobianKDTask
from fortify.train.tasks.kd import KDTask, kd_loss


METHODS = ("kd", "ard", "jacobian_kd")


@TRANSFORMS.register("distill", help="distil the model into a smaller student (KD, ARD, Jacobian matching)")
class Distill(Transform):
    """Args: ``student`` (registry name, built with the teacher's in_shape/num_classes/normalisation)
    and ``student_args`` (widths), or a student ``nn.Module``; ``method`` in :data:`METHODS`;
    ``method_args`` (temperature, alpha, threat, ...); ``epochs``; ``config`` (TrainConfig fields)."""

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

    def _run(self, model: nn.Module, example_inputs: torch.Tensor, data: Data | None) -> TransformResult:
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
