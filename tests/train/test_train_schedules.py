"""LR schedules against analytic values and an independent implementation (torch's CosineAnnealingLR)."""
from __future__ import annotations

import math

import pytest
import torch

from fortify.errors import ConfigError
from fortify.train import Trainer, TrainConfig
from fortify.train.schedules import ONECYCLE_DIV, StepLR, lr_at, warmup_steps


def test_cosine_half_way_is_half_the_peak() -> None:
    assert lr_at("cosine", 0, 100, 0.4) == pytest.approx(0.4)
    assert lr_at("cosine", 50, 100, 0.4) == pytest.approx(0.2)
    assert lr_at("cosine", 75, 100, 0.4) == pytest.approx(0.4 * (1 + math.cos(0.75 * math.pi)) / 2)
    # with 10% warmup: linear ramp (t+1)/W * peak, then cosine over the remaining 90 steps
    assert [lr_at("cosine", t, 100, 0.4, 0.1) for t in (0, 4, 9)] == pytest.approx([0.04, 0.2, 0.4])
    assert lr_at("cosine", 10 + 45, 100, 0.4, 0.1) == pytest.approx(0.2)


def test_cosine_matches_torch_cosine_annealing() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.3)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=37, eta_min=0.0)
    for t in range(37):
        assert lr_at("cosine", t, 37, 0.3) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12)
        opt.step()
        ref.step()


def test_step_matches_torch_multistep() -> None:
    # 70 "epochs" of 3 steps: lr / 5 at epochs 50 and 60, as torch's MultiStepLR(milestones=[150, 180], 0.2)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=5e-4)
    ref = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[150, 180], gamma=0.2)
    for t in range(210):
        assert lr_at("step", t, 210, 5e-4) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        ref.step()
    # with warmup the milestones sit at 5/7 and 6/7 of the steps after it
    assert [lr_at("step", t, 80, 1.0, 0.125) for t in (0, 9, 10, 59, 60, 69, 70)] == pytest.approx(
        [0.1, 1.0, 1.0, 1.0, 0.2, 0.2, 0.04])


def test_onecycle_peak_and_ends() -> None:
    T, peak = 100, 0.2
    lrs = [lr_at("onecycle", t, T, peak, 0.3) for t in range(T)]
    assert warmup_steps(T, 0.3) == 30
    assert max(lrs) == pytest.approx(peak) and lrs.index(max(lrs)) == 30
    assert lrs[0] == pytest.approx(peak / ONECYCLE_DIV)
    assert lrs[15] == pytest.approx(peak / 25 + (peak - peak / 25) * 0.5)
    assert lrs[65] == pytest.approx(peak * 0.5)  # linear down: half way between t=30 and t=100
    assert lrs[-1] == pytest.approx(peak / 70)
    assert all(a < b for a, b in zip(lrs[:30], lrs[1:31])) and all(a > b for a, b in zip(lrs[30:], lrs[31:]))


def test_constant_with_warmup_and_clamping() -> None:
    assert [lr_at("constant", t, 10, 1.0, 0.5) for t in range(10)] == pytest.approx(
        [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert lr_at("constant", 500, 10, 1.0) == 1.0
    assert warmup_steps(1, 0.99) == 0 and lr_at("onecycle", 0, 1, 1.0, 0.99) == 1.0
    with pytest.raises(ConfigError, match="schedule"):
        lr_at("linear", 0, 10, 1.0)


def test_steplr_state_round_trip_and_mismatch() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = StepLR(opt, "cosine", 20, 1.0)
    for _ in range(7):
        s.apply()
        s.advance()
    s2 = StepLR(opt, "cosine", 20, 1.0)
    s2.load_state_dict(s.state_dict())
    assert s2.apply() == pytest.approx(lr_at("cosine", 7, 20, 1.0))
    with pytest.raises(ConfigError, match="total_steps"):
        StepLR(opt, "cosine", 21, 1.0).load_state_dict(s.state_dict())


@pytest.mark.parametrize("schedule, warmup", [("cosine", 0.2), ("onecycle", None), ("constant", 0.25), ("step", 0.1)])
def test_trainer_applies_the_schedule_per_step(schedule: str, warmup: float | None) -> None:
    seen: list[float] = []

    class Spy:
        def on_step_end(self, trainer: Trainer, step: int, out: dict) -> None:
            seen.append(trainer.optimizer.param_groups[0]["lr"])

    x = torch.randn(40, 3)
    y = (x[:, 0] > 0).long()
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, schedule=schedule, warmup=warmup, momentum=0.0)
    hist = Trainer(torch.nn.Linear(3, 2), "standard", cfg, progress=False, callbacks=[Spy()]).fit((x, y))
    T = 3 * 3
    assert seen == pytest.approx([lr_at(schedule, t, T, 0.05, cfg.warmup_fraction) for t in range(T)])
    assert [r["lr"] for r in hist] == pytest.approx([seen[2], seen[5], seen[8]])
