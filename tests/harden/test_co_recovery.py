"""Catastrophic-overfitting recovery of Fast-AT: the escalation ladder (unit level), and the end-to-end
property on mnist-5k - FGSM-RS at step 1.25 eps, linf 0.3 collapses, the guard detects it, rolls back,
escalates to a 4-step attack (recorded per epoch) and ends far more robust - while a healthy PGD-AT run
never triggers the guard."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from fortify.errors import ConfigError
from fortify.threat import ThreatModel
from fortify.train import Trainer, TrainConfig, tasks
from fortify.train.adversarial import CatastrophicOverfittingGuard, RobustnessMonitor, robust_accuracy

from conftest import blobs, tiny_cnn


def test_auto_ladder_escalates_steps_and_survives_rollback_and_resume() -> None:
    task = tasks.create("fast_at", threat="linf:0.3", grad_align=0.5)
    before = task.state_dict()
    assert "attack_steps -> 4" in task.on_catastrophic_overfitting("auto")
    task.pin_state()
    task.load_state_dict(before)  # what a rollback does: the recovery must stay
    assert (task.attack_steps, task.current_steps(), task.step_ratio, task.grad_align) == (4, 4, 0.625, 0.0)
    task.on_catastrophic_overfitting("multi-step")
    assert (task.attack_steps, task.step_ratio) == (8, 0.3125)
    fresh = tasks.create("fast_at", threat="linf:0.3")
    fresh.load_state_dict(task.state_dict())  # a resumed run continues at the escalated strength
    assert (fresh.attack_steps, fresh.step_ratio, fresh.co_events) == (8, 0.3125, 2)
    ga = tasks.create("fast_at", threat="linf:0.3")
    ga.on_catastrophic_overfitting("gradalign")
    assert (ga.grad_align, ga.attack_steps) == (2.0, 1)
    with pytest.raises(ConfigError, match="co_steps must be an integer >= 2"):
        tasks.create("fast_at", co_steps=1)
    with pytest.raises(ConfigError, match="allowed: lower-step, gradalign, multi-step, auto"):
        ga.on_catastrophic_overfitting("panic")


def test_escalated_attack_costs_k_gradients_and_is_recorded() -> None:
    """After escalation each step reports K B input-gradient evaluations and steps = K."""
    x, y = blobs(32)
    task = tasks.create("fast_at", threat="linf:0.1")
    out1 = task(tiny_cnn(), x, y, generator=torch.Generator().manual_seed(0)).metrics
    task.on_catastrophic_overfitting("auto")
    out2 = task(tiny_cnn(), x, y, generator=torch.Generator().manual_seed(0)).metrics
    assert (out1["grad_evals"], out1["steps"], out1["step_ratio"]) == (32, 1, 1.25)
    assert (out2["grad_evals"], out2["steps"], out2["step_ratio"], out2["ga_lambda"]) == (128, 4, 0.625, 0.0)


def _mnist(n: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    from fortify import data

    x, y = data.load("mnist-5k", split="train")
    xt, yt = data.load("mnist-5k", split="test")
    return (x[:n], y[:n]), (xt, yt)


def _fit(task: Any, train: tuple, held_out: tuple, epochs: int, guard: bool) -> tuple[torch.nn.Module, list, Any]:
    from fortify import models

    torch.manual_seed(0)
    model = models.Normalized(models.create("small-cnn"), (0.1307,), (0.3081,))
    mon = RobustnessMonitor(*held_out, threat="linf:0.3", n=100, steps=5)
    g = CatastrophicOverfittingGuard(mon, action="auto") if guard else None
    cfg = TrainConfig(epochs=epochs, batch_size=50, optimizer="adam", lr=0.003, weight_decay=0.0,
                      schedule="onecycle", seed=0)
    hist = Trainer(model, task, cfg, progress=False, callbacks=[mon] + ([g] if g else [])).fit(train)
    return model, hist, g


def test_guard_rescues_fast_at_from_catastrophic_overfitting_on_mnist_5k() -> None:
    """1,000 mnist-5k images, 8 epochs, eps ramp over 40%: unguarded Fast-AT ends at ~6% PGD-10
    accuracy (200 test images; measured 6.5%), the guarded run escalates to a 4-step attack at the
    first CO event and ends at ~26% (measured 26.5%); required margin 10 points."""
    torch.set_num_threads(1)
    train, (xt, yt) = _mnist(1000)
    held_out = (xt[-100:], yt[-100:])
    threat = ThreatModel("linf", 0.3)
    acc, hists = {}, {}
    for guard in (False, True):
        task = tasks.create("fast_at", threat="linf:0.3", step_ratio=1.25,
                            schedule=[{"name": "eps-ramp", "warmup": 0.4}], monitor=False, co_guard=False)
        model, hists[guard], g = _fit(task, train, held_out, 8, guard)
        acc[guard] = robust_accuracy(model, xt[:200], yt[:200], threat, steps=10)[1]
    assert acc[False] <= 0.12, acc  # collapsed
    assert acc[True] >= acc[False] + 0.10, acc
    h = hists[True]
    fired = [r["epoch"] for r in h if r["rolled_back"]]
    assert fired and h[-1]["co_events"] == len(fired) >= 1
    first = fired[0]
    # the escalation is in every epoch record: FGSM (1 step, 1.25 eps) before, 4 steps of 0.625 eps after
    assert all((r["steps"], r["step_ratio"]) == (1, 1.25) for r in h if r["epoch"] <= first)
    assert all(r["steps"] >= 4 and r["step_ratio"] <= 0.625 for r in h if r["epoch"] > first)
    assert "attack_steps -> 4" in h[first - 1]["co_action"]


def test_guard_stays_quiet_on_healthy_pgd_at_with_eps_ramp_on_mnist_5k() -> None:
    """PGD-3 AT with the same eps ramp (ramp-time gap rule active): no CO event, no rollback."""
    torch.set_num_threads(1)
    train, (xt, yt) = _mnist(400)
    task = tasks.create("pgd_at", threat="linf:0.3", steps=3, schedule=[{"name": "eps-ramp", "warmup": 0.4}],
                        monitor=False)
    _, hist, g = _fit(task, train, (xt[-100:], yt[-100:]), 4, True)
    assert g.events == [] and all(not r["rolled_back"] and r["co_events"] == 0 for r in hist)
    assert any("ramp_robust_acc" in r for r in hist)  # the ramp rule did measure
