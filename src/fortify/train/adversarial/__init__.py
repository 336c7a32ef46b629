"""Shared training-time machinery of the adversarial tasks (the *harden* pillar).

* :mod:`.inner` - the in-graph inner maximisation (PGD / FGSM-RS / MSD) used by every task;
* :mod:`.schedules` - adaptive attack strength (eps ramp, steps 1 -> K, accuracy-driven steps);
* :mod:`.base` - :class:`AdversarialTask`: threat, schedule, accounting, state;
* :mod:`.monitor` - :class:`RobustnessMonitor`: per-epoch clean / PGD-10 accuracy callback;
* :mod:`.overfitting` - :class:`CatastrophicOverfittingGuard`: CO detection, rollback, recovery;
* :mod:`.penalties` - GradAlign, input-gradient norm and curvature regularisers;
* :mod:`.noise` - random self-ensemble noise layers and the ensemble wrapper.
"""
from __future__ import annotations

import torch

from fortify.train.adversarial.base import AdversarialTask, parse_threat
from fortify.train.adversarial.inner import ce_per_sample, default_step_size, kl_per_sample, msd_perturb, perturb
from fortify.train.adversarial.monitor import RobustnessMonitor, robust_accuracy
from fortify.train.adversarial.noise import NoiseLayer, SelfEnsemble, add_noise_layers
from fortify.train.adversarial.overfitting import CatastrophicOverfittingGuard
from fortify.train.adversarial.schedules import SCHEDULES, Schedule, make_schedule


def callbacks_for(task: object, val: tuple[torch.Tensor, torch.Tensor]) -> list[object]:
    """The harden callbacks a task asks for (its ``monitor`` / ``co_guard`` options), measuring on
    ``val = (x, y)``; ``[]`` for tasks without them (e.g. ``standard``, ``rse``)."""
    make = getattr(task, "callbacks", None)
    return list(make(val)) if callable(make) else []


__all__ = [
    "AdversarialTask", "parse_threat", "perturb", "msd_perturb", "ce_per_sample", "kl_per_sample",
    "default_step_size", "RobustnessMonitor", "robust_accuracy", "CatastrophicOverfittingGuard",
    "Schedule", "SCHEDULES", "make_schedule", "NoiseLayer", "SelfEnsemble", "add_noise_layers", "callbacks_for",
]
