"""Certified-training tasks: schedules, loss decrease and IBP-certified accuracy on a tiny problem."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fortify.certify import certified_accuracy
from fortify.errors import ConfigError
from fortify.threat import ThreatModel
from fortify.train.tasks import TASKS, create

THREAT = ThreatModel("linf", 0.08)


def _problem(seed: int = 0, n: int = 240) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian blobs in [0, 1]^8 (shape (1, 2, 4)), centres 0.45 apart in linf."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.2] * 8, [0.8] * 4 + [0.2] * 4, [0.5] * 8])
    centres[2, :4] = 0.5
    centres[2, 4:] = 0.8
    y = torch.arange(n) % 3
    x = (centres[y] + 0.06 * torch.randn(n, 8, generator=g)).clamp(0, 1)
    return x.reshape(n, 1, 2, 4), y


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 3))


def _train(task, steps: int = 150) -> tuple[nn.Module, list[float]]:
    x, y = _problem()
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    losses = []
    for step in range(steps):
        task.set_progress(step / steps, 0)
        idx = torch.arange(step * 60, step * 60 + 60) % len(x)
        out = task(net, x[idx], y[idx])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    return net.eval(), losses


@pytest.mark.parametrize("name", ["ibp", "crown_ibp"])
def test_certified_training_raises_ibp_certified_accuracy(name: str) -> None:
    task = create(name, threat=THREAT, ramp_end=0.4)
    xt, yt = _problem(seed=1, n=150)
    before = certified_accuracy(_net().eval(), xt, yt, THREAT, "ibp")
    net, losses = _train(task)
    after = certified_accuracy(net, xt, yt, THREAT, "ibp")
    std, _ = _train(create("standard"))
    baseline = certified_accuracy(std, xt, yt, THREAT, "ibp")
    # loss at full eps (after the ramp) decreases
    tail = len(losses) * 2 // 5 + 1
    assert sum(losses[-10:]) / 10 < sum(losses[tail:tail + 10]) / 10
    assert after >= 0.9 and after > before and after > baseline, (before, after, baseline)


def test_schedules_follow_the_ramp() -> None:
    t = create("crown_ibp", threat="linf:0.2", warmup=0.1, ramp_end=0.5, kappa_start=1.0, kappa_end=0.0)
    t.set_progress(0.05, 0)
    assert t.eps_now() == 0.0 and t.kappa_now() == 1.0 and t.beta_now() == 1.0
    t.set_progress(0.3, 0)
    assert t.eps_now() == pytest.approx(0.1) and t.kappa_now() == pytest.approx(0.5) and t.beta_now() == pytest.approx(0.5)
    t.set_progress(0.9, 1)
    assert t.eps_now() == pytest.approx(0.2) and t.kappa_now() == 0.0 and t.beta_now() == 0.0
    i = create("ibp", threat=THREAT)
    i.set_progress(1.0, 3)
    assert i.kappa_now() == pytest.approx(0.5)  # Gowal et al.: kappa 1 -> 0.5
    with pytest.raises(ConfigError):
        create("ibp", threat=THREAT, warmup=0.6, ramp_end=0.5)
    with pytest.raises(ConfigError):
        create("ibp", threat=42)


def test_robust_loss_upper_bounds_worst_case_attack_loss() -> None:
    import torch.nn.functional as F
    task = create("ibp", threat=THREAT, kappa_start=0.0, kappa_end=0.0)
    task.set_progress(1.0, 0)
    x, y = _problem(seed=2, n=30)
    net = _net(3).eval()
    out = task(net, x, y)
    xa = THREAT.random_init(x.repeat(50, 1, 1, 1))
    with torch.no_grad():
        sampled = F.cross_entropy(net(xa), y.repeat(50), reduction="none").reshape(50, -1).amax(0).mean()
    assert float(out.metrics["robust_loss"]) >= float(sampled) - 1e-5


def test_gaussian_noise_task_lowers_loss_and_is_registered() -> None:
    assert "gaussian_noise" in TASKS
    task = create("gaussian_noise", sigma=0.1, samples=2)
    net, losses = _train(task, steps=60)
    assert sum(losses[-10:]) < sum(losses[:10])
    x, y = _problem(seed=3, n=30)
    out = task(net, x, y)
    assert out.logits.shape == (60, 3)
    with pytest.raises(ConfigError):
        create("gaussian_noise", sigma=-1.0)


def test_smoothed_eps_ramp_is_continuous_monotone_and_reaches_eps() -> None:
    from fortify.train.tasks.ibp import SMOOTH_MID, eps_fraction

    r = torch.linspace(0, 1, 2001).tolist()
    f = [eps_fraction(v, "smoothed") for v in r]
    assert f[0] == 0.0 and f[-1] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(f, f[1:]))
    h = 1e-6  # value and slope continuous at the switch from the power law to the line
    left = (eps_fraction(SMOOTH_MID, "smoothed") - eps_fraction(SMOOTH_MID - h, "smoothed")) / h
    right = (eps_fraction(SMOOTH_MID + h, "smoothed") - eps_fraction(SMOOTH_MID, "smoothed")) / h
    assert left == pytest.approx(right, rel=1e-3)
    assert eps_fraction(0.1, "smoothed") < 0.1 * eps_fraction(0.5, "smoothed")  # slow start
    assert [eps_fraction(v) for v in (0.0, 0.3, 1.0)] == [0.0, 0.3, 1.0]  # linear is the identity
    task = create("ibp", threat="linf:0.4", warmup=0.2, ramp_end=0.6, schedule="smoothed")
    task.set_progress(0.6, 0)
    assert task.eps_now() == pytest.approx(0.4)
    task.set_progress(0.3, 0)  # r = 0.25: the switch point
    assert task.eps_now() == pytest.approx(0.4 * eps_fraction(0.25, "smoothed"))
    with pytest.raises(ConfigError, match="schedule"):
        create("crown_ibp", threat=THREAT, schedule="cosine")


def test_ibp_init_keeps_interval_radius_growth_constant_per_layer() -> None:
    from fortify.models.init import ibp_init

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1000, 600), nn.ReLU(), nn.Conv2d(1, 1, 1), nn.Linear(600, 7))
    last = net[3].weight.clone()
    assert ibp_init(net, torch.Generator().manual_seed(1)) == 2
    assert torch.equal(net[3].weight, last)  # the last layer keeps its initialisation
    w = net[0].weight.detach()
    assert float(w.std()) == pytest.approx((2 * torch.pi) ** 0.5 / 1000, rel=0.02)
    assert float(w.mean()) == pytest.approx(0.0, abs=1e-4)
    # an interval of radius r through |W|: E|w| * fan_in = sqrt(2/pi) * sqrt(2 pi) = 2, whatever the width
    rad = torch.full((1, 1000), 0.1)
    growth = float((rad @ w.abs().T).mean() / 0.1)
    assert growth == pytest.approx(2.0, rel=0.03)
    default = nn.Linear(1000, 600)  # Kaiming-uniform: E|w| * fan_in = sqrt(fan_in) / 2 ~ 15.8
    assert float((rad @ default.weight.detach().abs().T).mean() / 0.1) > 5 * growth
    with pytest.raises(ConfigError, match="no Linear or Conv2d"):
        ibp_init(nn.Sequential(nn.ReLU()))
