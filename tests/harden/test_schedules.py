"""Adaptive-strength schedules: closed-form values, the accuracy-driven rule, composition, state."""
from __future__ import annotations

import pytest

from fortify.errors import ConfigError, UnknownNameError
from fortify.train import tasks
from fortify.train.adversarial.schedules import AccuracyDrivenSteps, Compose, EpsRamp, StepsRamp, make_schedule


def test_eps_ramp_is_linear_then_flat() -> None:
    s = EpsRamp(warmup=0.5, start=0.2)
    assert [round(s.eps_scale(p), 6) for p in (0.0, 0.25, 0.5, 0.9)] == [0.2, 0.6, 1.0, 1.0]
    assert s.steps(0.1, 7) == 7


def test_steps_ramp_goes_from_one_to_k() -> None:
    s = StepsRamp(min_steps=1, until=0.5)
    assert [s.steps(p, 9) for p in (0.0, 0.25, 0.5, 1.0)] == [1, 5, 9, 9]
    assert s.eps_scale(0.0) == 1.0


def test_accuracy_driven_doubles_when_attack_too_weak_or_plateau() -> None:
    s = AccuracyDrivenSteps(min_steps=1, gap=0.1, patience=2)
    assert s.steps(0.0, 8) == 1
    s.observe({"robust_acc": 0.30, "train_adv_acc": 0.35})  # improving, gap small: stay
    assert s.steps(0.0, 8) == 1
    s.observe({"robust_acc": 0.40, "train_adv_acc": 0.70})  # training attack much weaker than PGD-10
    assert s.steps(0.0, 8) == 2
    s.observe({"robust_acc": 0.40})
    s.observe({"robust_acc": 0.40})  # plateau for `patience` epochs
    assert s.steps(0.0, 8) == 4
    for _ in range(6):
        s.observe({"robust_acc": 0.40})
    assert s.steps(0.0, 8) == 8  # capped at the task's K
    fresh = AccuracyDrivenSteps(min_steps=1, gap=0.1, patience=2)
    fresh.load_state_dict(s.state_dict())
    assert fresh.state_dict() == s.state_dict()


def test_compose_and_factory() -> None:
    s = make_schedule(["eps-ramp", {"name": "steps-ramp", "min_steps": 2, "until": 0.5}])
    assert isinstance(s, Compose)
    assert s.eps_scale(0.15) == pytest.approx(0.5)
    assert s.steps(0.0, 10) == 2 and s.steps(1.0, 10) == 10
    assert isinstance(make_schedule("eps-ramp+steps-ramp"), Compose)
    assert make_schedule(None).steps(0.3, 4) == 4


def test_a_schedule_drives_any_adversarial_task() -> None:
    t = tasks.create("trades", steps=6, schedule=["eps-ramp", "steps-ramp"])
    t.set_progress(0.0, 0)
    assert t.current_threat().eps == 0.0 and t.current_steps() == 1
    t.set_progress(1.0, 5)
    assert t.current_threat().eps == pytest.approx(0.3) and t.current_steps() == 6


@pytest.mark.parametrize(
    "spec,match",
    [("nope", "unknown schedule"), ({"name": "eps-ramp", "warmup": 0}, "warmup"),
     ({"name": "steps-ramp", "min_steps": 0}, "min_steps"), ({"warmup": 0.3}, "name"),
     ({"name": "eps-ramp", "bogus": 1}, "bogus"), (3.5, "cannot build")],
)
def test_bad_schedules_raise_config_errors(spec: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_schedule(spec)
    assert issubclass(UnknownNameError, ConfigError)
