"""Adaptive attack-strength schedules for adversarial training.

A weak adversary early in training is enough and much cheaper (Wang et al. 2019, "On the
convergence and robustness of adversarial training"; Cai et al. 2018, "Curriculum adversarial
training"); a small eps at the start avoids the collapse of large-eps training (Gowal et al. 2018
eps ramp for IBP, also used for PGD-AT). A schedule maps the training progress ``p in [0, 1]`` and
the task's nominal ``(eps, steps)`` to the strength used at this step:

* ``eps-ramp``: ``eps * (start + (1 - start) * min(1, p / warmup))``.
* ``steps-ramp``: steps growing linearly from ``min_steps`` to the nominal ``K`` by ``p = until``.
* ``accuracy``: steps driven by measured robust accuracy (curriculum, Cai et al. 2018): start at
  ``min_steps``; after each epoch the robustness monitor reports the held-out PGD-10 accuracy and
  the accuracy on the training-attack examples; when the training attack is clearly weaker than
  PGD-10 (gap > ``gap``) or the robust accuracy has not improved for ``patience`` epochs, the step
  count doubles (capped at ``K``).

Schedules combine (``[eps-ramp, steps-ramp]``): eps factors multiply, step rules chain (each caps
the previous). Every schedule keeps its state in ``state_dict`` so resume is exact.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from fortify.errors import ConfigError
from fortify.registry import Registry


def _frac(value: object, name: str, *, allow_zero: bool = True) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"schedule {name} must be a number in [0, 1], got {value!r}") from None
    if not math.isfinite(v) or v < 0 or v > 1 or (v == 0 and not allow_zero):
        raise ConfigError(f"schedule {name} must be in {'[0, 1]' if allow_zero else '(0, 1]'}, got {value!r}")
    return v


class Schedule:
    """Identity schedule: nominal eps and steps throughout (the ``constant`` schedule)."""

    name = "constant"

    def eps_scale(self, progress: float) -> float:
        """Factor in [0, 1] applied to the task's eps at training progress ``progress``."""
        return 1.0

    def steps(self, progress: float, max_steps: int) -> int:
        """Attack steps to use now given the task's nominal ``max_steps``."""
        return max_steps

    def observe(self, metrics: Mapping[str, float]) -> None:
        """Receive the epoch's measured metrics (``robust_acc``, ``train_adv_acc``...)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


SCHEDULES: Registry = Registry("schedule")
SCHEDULES.register("constant", Schedule, help="nominal eps and steps throughout")


@SCHEDULES.register("eps-ramp", help="eps grows linearly from start*eps to eps over the first `warmup` of training")
class EpsRamp(Schedule):
    name = "eps-ramp"

    def __init__(self, warmup: float = 0.3, start: float = 0.0) -> None:
        self.warmup = _frac(warmup, "warmup", allow_zero=False)
        self.start = _frac(start, "start")

    def eps_scale(self, progress: float) -> float:
        return self.start + (1.0 - self.start) * min(1.0, max(0.0, progress) / self.warmup)


@SCHEDULES.register("steps-ramp", help="attack steps grow linearly from min_steps to K by progress `until`")
class StepsRamp(Schedule):
    name = "steps-ramp"

    def __init__(self, min_steps: int = 1, until: float = 0.7) -> None:
        if isinstance(min_steps, bool) or not isinstance(min_steps, int) or min_steps < 1:
            raise ConfigError(f"schedule min_steps must be an integer >= 1, got {min_steps!r}")
        self.min_steps = min_steps
        self.until = _frac(until, "until", allow_zero=False)

    def steps(self, progress: float, max_steps: int) -> int:
        lo = min(self.min_steps, max_steps)
        t = min(1.0, max(0.0, progress) / self.until)
        return int(round(lo + (max_steps - lo) * t))


@SCHEDULES.register("accuracy", help="attack steps double when measured robust accuracy says the attack is too weak")
class AccuracyDrivenSteps(Schedule):
    name = "accuracy"

    def __init__(self, min_steps: int = 1, gap: float = 0.1, patience: int = 2, min_delta: float = 0.01) -> None:
        if isinstance(min_steps, bool) or not isinstance(min_steps, int) or min_steps < 1:
            raise ConfigError(f"schedule min_steps must be an integer >= 1, got {min_steps!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ConfigError(f"schedule patience must be an integer >= 1, got {patience!r}")
        self.min_steps = min_steps
        self.gap = _frac(gap, "gap")
        self.patience = patience
        self.min_delta = _frac(min_delta, "min_delta")
        self.level = min_steps
        self.best = -1.0
        self.stale = 0

    def steps(self, progress: float, max_steps: int) -> int:
        return min(self.level, max_steps)

    def observe(self, metrics: Mapping[str, float]) -> None:
        robust = metrics.get("robust_acc")
        if robust is None:
            return
        robust = float(robust)
        train_adv = metrics.get("train_adv_acc")
        too_weak = train_adv is not None and float(train_adv) - robust > self.gap
        if robust > self.best + self.min_delta:
            self.best, self.stale = robust, 0
        else:
            self.stale += 1
        if too_weak or self.stale >= self.patience:
            self.level *= 2
            self.stale = 0

    def state_dict(self) -> dict[str, Any]:
        return {"level": self.level, "best": self.best, "stale": self.stale}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.level = int(state["level"])
        self.best = float(state["best"])
        self.stale = int(state["stale"])


class Compose(Schedule):
    """Several schedules at once: eps factors multiply; step rules chain, each capping the last."""

    name = "compose"

    def __init__(self, parts: Sequence[Schedule]) -> None:
        self.parts = list(parts)

    def eps_scale(self, progress: float) -> float:
        return math.prod(p.eps_scale(progress) for p in self.parts)

    def steps(self, progress: float, max_steps: int) -> int:
        k = max_steps
        for p in self.parts:
            k = p.steps(progress, k)
        return max(1, k)

    def observe(self, metrics: Mapping[str, float]) -> None:
        for p in self.parts:
            p.observe(metrics)

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [p.state_dict() for p in self.parts]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for p, s in zip(self.parts, state["parts"]):
            p.load_state_dict(s)


def make_schedule(spec: Any) -> Schedule:
    """Build a schedule from a recipe value.

    Accepts ``None`` (constant), a :class:`Schedule`, a name (``"eps-ramp"``), a mapping
    ``{"name": "steps-ramp", "min_steps": 1, "until": 0.5}``, or a list of these (combined).
    """
    if spec is None:
        return Schedule()
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, str):
        if "+" in spec:
            return make_schedule([s.strip() for s in spec.split("+")])
        return SCHEDULES.get(spec)()
    if isinstance(spec, Mapping):
        args = dict(spec)
        name = args.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"a schedule mapping needs a 'name' key; allowed: {', '.join(SCHEDULES.names())}")
        cls = SCHEDULES.get(name)
        try:
            return cls(**args)
        except TypeError as e:
            raise ConfigError(f"bad arguments for schedule {name!r}: {e}") from None
    if isinstance(spec, Sequence):
        parts = [make_schedule(s) for s in spec]
        return parts[0] if len(parts) == 1 else Compose(parts)
    raise ConfigError(f"cannot build a schedule from {type(spec).__name__}; give a name, mapping or list")


__all__ = ["Schedule", "EpsRamp", "StepsRamp", "AccuracyDrivenSteps", "Compose", "SCHEDULES", "make_schedule"]
