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

from typing import Any

import torch

from fortify.train.adversarial.base import AdversarialTask, parse_threat
from fortify.train.adversarial.inner import ce_per_sample, default_step_size, kl_per_sample, msd_perturb, perturb
from fortify.train.adversarial.monitor import RobustnessMonitor, robust_accuracy
from fortify.train.adversarial.noise import NoiseLayer, SelfEnsemble, add_noise_layers
from fortify.train.adversarial.overfitting import CatastrophicOverfittingGuard
from fortify.train.adversarial.schedules import SCHEDULES, Schedule, make_schedule


def callbacks_for(task: object, val: tuple[torch.Tensor, torch.Tensor], *, monitor: bool | dict[str, Any] = True,
                  co_guard: bool | dict[str, Any] = False) -> list[object]:
    """The harden callbacks for a training run: a :class:`RobustnessMonitor` on the first points of
    ``val`` (options in ``monitor``) and, if asked, a :class:`CatastrophicOverfittingGuard`
    (options in ``co_guard``; on by default for ``fast_at``). Tasks without a threat get none."""
    if getattr(task, "threat", None) is None or (not monitor and not co_guard):
        return []
    mon = RobustnessMonitor(val[0], val[1], **(monitor if isinstance(monitor, dict) else {}))
    out: list[object] = [mon]
    if co_guard:
        out.append(CatastrophicOverfittingGuard(mon, **(co_guard if isinstance(co_guard, dict) else {})))
    return out


__all__ = [
    "AdversarialTask", "parse_threat", "perturb", "msd_perturb", "ce_per_sample", "kl_per_sample",
    "default_step_size", "RobustnessMonitor", "robust_accuracy", "CatastrophicOverfittingGuard",
    "Schedule", "SCHEDULES", "make_schedule", "NoiseLayer", "SelfEnsemble", "add_noise_layers", "callbacks_for",
]
