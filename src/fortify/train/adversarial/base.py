"""Shared base of the adversarial training tasks: threat parsing, schedules, accounting.

Every adversarial task holds a nominal threat model and attack step count; a
:class:`~fortify.train.adversarial.schedules.Schedule` turns them into the strength used at the
current training progress. The base class counts input-gradient evaluations (``grad_evals`` in each
step's output and ``grad_evals_total`` over the run) and the accuracy on the training adversarial
examples (``train_adv_acc``, read by the robustness monitor), and keeps all of it in
``state_dict`` so a resumed run continues exactly.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from fortify.errors import ConfigError
from fortify.threat import ThreatModel
from fortify.train.adversarial.inner import LossFn, check_steps, default_step_size, perturb
from fortify.train.adversarial.schedules import Schedule, make_schedule
from fortify.train.tasks.base import Task, TaskOutput


def parse_threat(threat: object) -> ThreatModel:
    """Accept a ThreatModel, ``"linf:0.3"`` or ``{"norm": "linf", "eps": 0.3}``: :meth:`ThreatModel.coerce`
    (kept as a name for existing callers; ThreatModelError, a ConfigError, on a bad value)."""
    return ThreatModel.coerce(threat)


def positive(value: object, name: str, *, allow_zero: bool = False) -> float:
    """Validate a finite number > 0 (or >= 0)."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ConfigError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return v


MONITOR_KEYS = ("n", "steps", "every", "seed")
GUARD_KEYS = ("max_drop", "max_gap", "action", "max_recoveries", "ramp")


def _options(value: object, name: str, keys: tuple[str, ...]) -> dict[str, Any] | None:
    """``True`` -> ``{}``, ``False``/``None`` -> ``None``, a mapping -> checked copy."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, Mapping):
        bad = sorted(set(value) - set(keys))
        if bad:
            raise ConfigError(f"unknown {name} option(s) {', '.join(map(str, bad))}; allowed: {', '.join(keys)}")
        return dict(value)
    raise ConfigError(f"{name} must be true, false or a mapping of options ({', '.join(keys)}), got {value!r}")


class AdversarialTask(Task):
    """Base for tasks that train on adversarial inputs.

    Args:
        threat: the threat model to be robust to (``"linf:0.3"``).
        steps: nominal number of attack steps ``K`` (>= 1).
        step_ratio: attack step size as a fraction of eps; default ``2.5 / K`` (1.25 for K = 1).
        schedule: adaptive-strength schedule (see :func:`make_schedule`), default constant.
        monitor: per-epoch robustness measurement: ``True``, ``False`` or options of
            :class:`~fortify.train.adversarial.monitor.RobustnessMonitor` (``n``, ``steps``, ``every``, ``seed``).
        co_guard: catastrophic-overfitting guard: ``False``, ``True`` or options of
            :class:`~fortify.train.adversarial.overfitting.CatastrophicOverfittingGuard`
            (``max_drop``, ``action``, ``max_recoveries``). Both become Trainer callbacks through
            :meth:`callbacks`.
    """

    def __init__(
        self,
        threat: object = "linf:0.3",
        steps: int = 10,
        step_ratio: float | None = None,
        schedule: object = None,
        *,
        monitor: object = True,
        co_guard: object = False,
    ) -> None:
        super().__init__()
        self.threat = parse_threat(threat)
        self.steps = check_steps(steps)
        self.step_ratio = None if step_ratio is None else positive(step_ratio, "step_ratio")
        self.schedule: Schedule = make_schedule(schedule)
        self.monitor_options = _options(monitor, "monitor", MONITOR_KEYS)
        self.co_guard_options = _options(co_guard, "co_guard", GUARD_KEYS)
        if self.co_guard_options is not None and self.monitor_options is None:
            self.monitor_options = {}
        self.grad_evals_total = 0
        self._adv_correct = 0
        self._adv_seen = 0
        self._pinned: dict[str, Any] = {}

    # ------------------------------------------------------------------ strength now
    def current_threat(self, threat: ThreatModel | None = None) -> ThreatModel:
        t = threat or self.threat
        return t.with_eps(t.eps * self.schedule.eps_scale(self.progress))

    def current_steps(self) -> int:
        return max(1, self.schedule.steps(self.progress, self.steps))

    def step_size(self, threat: ThreatModel, steps: int) -> float:
        if self.step_ratio is None:
            return default_step_size(threat, steps)
        return self.step_ratio * threat.eps

    def attack(
        self,
        model: nn.Module,
        x: torch.Tensor,
        loss_fn: LossFn,
        *,
        generator: torch.Generator | None,
        threat: ThreatModel | None = None,
        steps: int | None = None,
        random_start: bool = True,
        x_init: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, int]:
        """Run the shared inner maximisation at the current strength on ``x (B, ...)``; returns
        ``(x_adv (B, ...), grad_evals)``. ``generator``: the task call's generator (random start)."""
        t = self.current_threat(threat)
        k = self.current_steps() if steps is None else steps
        x_adv, evals = perturb(
            model, x, loss_fn, t, steps=k, step_size=self.step_size(t, k),
            random_start=random_start, x_init=x_init, generator=generator,
        )
        return x_adv, evals

    def callbacks(self, val: tuple[torch.Tensor, torch.Tensor]) -> list[object]:
        """Trainer callbacks asked for by ``monitor`` / ``co_guard``, measuring on the first points
        of ``val = (x (N, ...), y (N,))``: a RobustnessMonitor and, if enabled, a CO guard after it."""
        from fortify.train.adversarial.monitor import RobustnessMonitor
        from fortify.train.adversarial.overfitting import CatastrophicOverfittingGuard

        if self.monitor_options is None:
            return []
        mon = RobustnessMonitor(val[0], val[1], **self.monitor_options)
        if self.co_guard_options is None:
            return [mon]
        return [mon, CatastrophicOverfittingGuard(mon, **self.co_guard_options)]

    # ------------------------------------------------------------------ accounting
    def output(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, grad_evals: int,
               **metrics: float | torch.Tensor) -> TaskOutput:
        """The step's :class:`TaskOutput`; ``logits`` are those of the adversarial inputs ``(B, C)``;
        metrics: ``grad_evals``, ``adv_acc``, ``eps``, ``steps`` and the task's own ``metrics``."""
        self.grad_evals_total += int(grad_evals)
        correct = int((logits.detach().argmax(dim=1) == y).sum())
        self._adv_correct += correct
        self._adv_seen += int(y.shape[0])
        return TaskOutput(loss, logits, {
            "grad_evals": int(grad_evals),
            "adv_acc": correct / max(1, int(y.shape[0])),
            "eps": self.current_threat().eps,
            "steps": self.current_steps(),
            **metrics,
        })

    def train_adv_acc(self) -> float | None:
        return self._adv_correct / self._adv_seen if self._adv_seen else None

    def observe(self, metrics: Mapping[str, float]) -> None:
        """End of epoch: pass measured metrics to the schedule and reset the epoch counters."""
        merged = dict(metrics)
        if "train_adv_acc" not in merged and self._adv_seen:
            merged["train_adv_acc"] = self.train_adv_acc()  # type: ignore[assignment]
        self.schedule.observe(merged)
        self._adv_correct = self._adv_seen = 0

    def on_catastrophic_overfitting(self, action: str) -> str:
        """Recovery hook called by the CO guard; default: halve the attack step. Returns what was done."""
        base = self.step_ratio if self.step_ratio is not None else default_step_size(self.threat, self.steps) / max(
            self.threat.eps, 1e-12)
        self.step_ratio = base * 0.5
        return f"step_ratio -> {self.step_ratio:.3g}"

    # ------------------------------------------------------------------ state
    #: attributes that recovery actions change and that must survive a rollback
    PINNABLE: ClassVar[tuple[str, ...]] = ("step_ratio", "grad_align", "co_events")

    def pin_state(self) -> None:
        """Keep the current recovery settings across later ``load_state_dict`` calls in this process
        (a rollback restores an older task state; the CO recovery must not be undone by it)."""
        self._pinned = {k: getattr(self, k) for k in self.PINNABLE if hasattr(self, k)}

    def _apply_pins(self) -> None:
        for k, v in self._pinned.items():
            setattr(self, k, v)

    def state_dict(self) -> dict[str, Any]:
        return {
            "grad_evals_total": self.grad_evals_total,
            "adv_correct": self._adv_correct,
            "adv_seen": self._adv_seen,
            "step_ratio": self.step_ratio,
            "schedule": self.schedule.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.grad_evals_total = int(state.get("grad_evals_total", 0))
        self._adv_correct = int(state.get("adv_correct", 0))
        self._adv_seen = int(state.get("adv_seen", 0))
        if "step_ratio" in state:
            self.step_ratio = None if state["step_ratio"] is None else float(state["step_ratio"])
        if "schedule" in state:
            self.schedule.load_state_dict(state["schedule"])
        self._apply_pins()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(threat={str(self.threat)!r}, steps={self.steps}, "
                f"step_ratio={self.step_ratio!r}, schedule={self.schedule!r})")


__all__ = ["AdversarialTask", "parse_threat", "positive"]
