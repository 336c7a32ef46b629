"""Per-step learning-rate schedules.

``lr_at(name, step, total_steps, peak, warmup)`` is a pure function of the global step ``t`` in
``[0, T)`` (the learning rate used *by* step ``t``); :class:`StepLR` applies it to an optimiser and
keeps its only state, the step counter, in a checkpointable ``state_dict``.

With ``W = floor(warmup * T)`` warmup steps (``W <= T - 1`` since ``warmup < 1``):

* ``constant``: ``peak * (t + 1) / W`` for ``t < W``, then ``peak``.
* ``cosine`` (Loshchilov & Hutter 2017, SGDR without restarts): the same linear warmup, then
  ``peak * (1 + cos(pi * p)) / 2`` with ``p = (t - W) / (T - W)``; so ``lr = peak / 2`` half way
  through the post-warmup steps.
* ``onecycle`` (Smith & Topin 2019; the cyclic schedule of Wong et al. 2020, "Fast is better than
  free"): linear from ``peak / 25`` at ``t = 0`` to ``peak`` at ``t = W``, then linear down to 0 at
  ``t = T`` (the last step uses ``peak / (T - W)``).
* ``step``: the same linear warmup, then ``peak`` multiplied by ``STEP_GAMMA`` (0.2) at each of
  ``STEP_MILESTONES`` (5/7 and 6/7 of the post-warmup steps): the MNIST schedule of Shi et al. 2021
  for certified training (lr / 5 at epochs 50 and 60 of 70).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from fortify.errors import ConfigError
from fortify.train.config import SCHEDULES

ONECYCLE_DIV = 25.0
STEP_MILESTONES = (5 / 7, 6 / 7)
STEP_GAMMA = 0.2


def warmup_steps(total_steps: int, warmup: float) -> int:
    """Number of warmup steps ``floor(warmup * T)`` (at most ``T - 1``)."""
    return min(int(math.floor(warmup * total_steps)), max(total_steps - 1, 0))


def lr_at(name: str, step: int, total_steps: int, peak: float, warmup: float = 0.0) -> float:
    """Learning rate of global step ``step`` (0-based) out of ``total_steps``.

    Steps past the end (``step >= T``) use the last step's value.
    """
    if name not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}; got {name!r}")
    if total_steps < 1:
        raise ConfigError(f"total_steps must be >= 1, got {total_steps}")
    t = min(max(int(step), 0), total_steps - 1)
    T = int(total_steps)
    W = warmup_steps(T, warmup)
    if name == "onecycle":
        if t <= W:
            start = peak / ONECYCLE_DIV
            return start + (peak - start) * (t / W if W > 0 else 1.0)
        return peak * (T - t) / (T - W)
    if t < W:
        return peak * (t + 1) / W
    if name == "constant":
        return peak
    p = (t - W) / (T - W)
    if name == "step":
        return peak * STEP_GAMMA ** sum(p >= m - 1e-12 for m in STEP_MILESTONES)
    return peak * 0.5 * (1.0 + math.cos(math.pi * p))


class StepLR:
    """Sets ``lr`` of every parameter group of ``optimizer`` before each step.

    Usage per step: ``sched.apply()`` (sets the lr of step ``sched.step_count``), ``optimizer.step()``,
    ``sched.advance()``.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, name: str, total_steps: int, peak: float, warmup: float = 0.0
    ) -> None:
        """``total_steps`` = T of the whole run, ``peak`` = config lr, ``warmup`` = fraction in [0, 1)."""
        self.optimizer = optimizer
        self.name = name
        self.total_steps = int(total_steps)
        self.peak = float(peak)
        self.warmup = float(warmup)
        self.step_count = 0
        lr_at(name, 0, self.total_steps, self.peak, self.warmup)  # validates

    def current_lr(self) -> float:
        """Learning rate of the next step."""
        return lr_at(self.name, self.step_count, self.total_steps, self.peak, self.warmup)

    def apply(self) -> float:
        """Write the next step's learning rate into the optimiser; return it."""
        lr = self.current_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def advance(self) -> None:
        """Count one finished optimiser step."""
        self.step_count += 1

    def state_dict(self) -> dict[str, Any]:
        """Plain-dict state (the step counter plus the schedule's definition for checks)."""
        return {
            "name": self.name,
            "total_steps": self.total_steps,
            "peak": self.peak,
            "warmup": self.warmup,
            "step_count": self.step_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the step counter; ConfigError when the schedule definition differs."""
        mine = self.state_dict()
        for key in ("name", "total_steps", "peak", "warmup"):
            if state.get(key) != mine[key]:
                raise ConfigError(
                    f"checkpointed LR schedule has {key}={state.get(key)!r} but this run has {mine[key]!r}"
                )
        self.step_count = int(state["step_count"])


__all__ = ["lr_at", "warmup_steps", "StepLR", "ONECYCLE_DIV", "STEP_MILESTONES", "STEP_GAMMA"]
