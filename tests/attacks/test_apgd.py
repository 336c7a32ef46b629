"""APGD / APGD-T: checkpoint schedule, step-halving rule, convergence through halving, strength
against PGD on a small trained MLP, targeted modes and the threat model."""
from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

import fortify.attacks as A
from fortify.attacks.apgd import checkpoints, halving_decision, l1_direction
from fortify.errors import ConfigError, ThreatModelError
from fortify.threat import ThreatModel


def test_checkpoints_match_the_paper() -> None:
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99  (Croce & Hein 2020, Sec. 3.2)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(1000) == [220, 410, 570, 700, 800, 870, 930, 990]
    for n in (1, 7, 10, 33, 250):
        w = checkpoints(n)
        assert w == sorted(set(w)) and 1 <= w[0] and w[-1] <= n
        assert w[0] == math.ceil(0.22 * n)


def test_halving_condition_one_counts_increases() -> None:
    t = torch.tensor
    no = torch.zeros(3, dtype=torch.bool)
    # window of h = 4 steps; rho * h = 3: halve iff fewer than 3 increases
    window = t([[0.0, 0.0, 0.0], [1.0, 1.0, -1.0], [2.0, 0.0, -2.0], [3.0, 1.0, -3.0], [4.0, 2.0, -4.0]])
    best = t([4.0, 2.0, 0.0])
    out = halving_decision(window, best, best - 1, no, 0.75)  # best improved: condition 2 off
    assert out.tolist() == [False, False, True]  # 4 increases, 3 increases, 0 increases


def test_halving_condition_two_needs_stall_and_no_previous_halving() -> None:
    window = torch.arange(5.0)[:, None].repeat(1, 3)  # always increasing: condition 1 off
    best_now = torch.tensor([1.0, 1.0, 2.0])
    best_last = torch.tensor([1.0, 1.0, 1.0])
    reduced_last = torch.tensor([False, True, False])
    assert halving_decision(window, best_now, best_last, reduced_last, 0.75).tolist() == [True, False, False]


class Bowl(nn.Module):
    """Two logits; the CE of class 0 is maximal at ``c`` and the point is never misclassified."""

    def __init__(self, c: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("c", c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = ((x - self.c) ** 2).flatten(1).sum(1)
        return torch.stack([torch.zeros_like(d), -d - 5.0], dim=1)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.3)])
def test_step_halving_converges_to_interior_maximum(norm: str, eps: float) -> None:
    x = torch.full((4, 10), 0.5)
    c = torch.full((10,), 0.5)
    c[:3] += torch.tensor([0.03, -0.05, 0.02])  # inside both balls
    model = Bowl(c)
    res = A.APGD(steps=100)(model, x, torch.zeros(4, dtype=torch.long), ThreatModel(norm, eps),
                            generator=torch.Generator().manual_seed(0))
    # with the initial step 2 * eps and no halving the iterates would stay ~eps away from c
    threat = ThreatModel(norm, eps)
    assert float(threat.distance(res.x_adv, c.expand_as(x)).max()) < 0.05 * eps
    assert not bool(res.success.any())


@functools.lru_cache(maxsize=1)
def trained_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 20-32-5 MLP trained 300 Adam steps on Gaussian clusters; returns correctly classified test
    points. Cached: callers must not modify the returned model or tensors in place."""
    g = torch.Generator().manual_seed(0)
    centres = 0.5 + 0.15 * (2 * torch.rand(5, 20, generator=g) - 1)
    yt = torch.randint(0, 5, (600,), generator=g)
    xt = (centres[yt] + 0.06 * torch.randn(600, 20, generator=g)).clamp(0, 1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt[:500]), yt[:500]).backward()
        opt.step()
    model.requires_grad_(False)
    with torch.no_grad():
        ok = model(xt[500:]).argmax(1) == yt[500:]
    assert float(ok.float().mean()) > 0.9
    return model, xt[500:][ok], yt[500:][ok]


@pytest.fixture(scope="module")
def mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return trained_mlp()


@pytest.mark.parametrize("norm,eps", [("linf", 0.06), ("l2", 0.2)])
def test_apgd_at_least_as_strong_as_pgd(mlp, norm: str, eps: float) -> None:
    """Same budget (20 steps). On this nearly piecewise-linear MLP APGD-CE and PGD-CE reach the same
    optimum up to one or two points; APGD-T (targeted DLR over 4 classes) is strictly stronger."""
    model, x, y = mlp
    threat = ThreatModel(norm, eps)
    gen = torch.Generator().manual_seed(0)
    pgd = A.PGD(steps=20)(model, x, y, threat, generator=gen)
    ce = A.APGD(steps=20, loss="ce")(model, x, y, threat, generator=gen)
    dlr = A.APGD(steps=20, loss="dlr")(model, x, y, threat, generator=gen)
    tgt = A.APGDT(steps=20, n_target_classes=4)(model, x, y, threat, generator=gen)
    n_pgd = int(pgd.success.sum())
    assert 0.1 * len(y) < n_pgd < 0.9 * len(y)  # a regime where strength matters
    assert int(ce.success.sum()) >= n_pgd - 2 and int(dlr.success.sum()) >= n_pgd - 2
    assert int((ce.success | dlr.success).sum()) >= n_pgd
    assert int(tgt.success.sum()) > n_pgd
    for r in (ce, dlr, tgt):
        assert bool(threat.contains(r.x_adv, x).all())
        with torch.no_grad():
            assert torch.equal(r.success, model(r.x_adv).argmax(1) != y)


def test_apgd_t_untargeted_and_explicit_targets(mlp) -> None:
    model, x, y = mlp
    threat = ThreatModel("linf", 0.06)
    gen = torch.Generator().manual_seed(0)
    res = A.APGDT(steps=20, n_target_classes=1)(model, x, y, threat, generator=torch.Generator().manual_seed(5))
    res4 = A.APGDT(steps=20, n_target_classes=4)(model, x, y, threat, generator=torch.Generator().manual_seed(5))
    assert bool((res4.success | ~res.success).all())  # more target classes only add successes
    with torch.no_grad():
        assert torch.equal(res4.success, model(res4.x_adv).argmax(1) != y)
    target = (y + 2) % 5
    big = ThreatModel("linf", 0.15)
    for attack in (A.APGDT(steps=20), A.APGD(steps=20, loss="dlr"), A.APGD(steps=20, loss="ce")):
        r = attack(model, x, y, big, targeted=target, generator=gen)
        with torch.no_grad():
            pred = model(r.x_adv).argmax(1)
        assert torch.equal(r.success, pred == target)
        assert float(r.success.float().mean()) > 0.9
        assert bool(big.contains(r.x_adv, x).all())


def test_apgd_rejects_bad_config(mlp) -> None:
    for kwargs in ({"steps": 0}, {"restarts": 0}, {"loss": "cw"}, {"rho": 0.0}, {"momentum": 2.0}):
        with pytest.raises(ConfigError):
            A.APGD(**kwargs)
    with pytest.raises(ConfigError):
        A.APGDT(n_target_classes=0)
    with pytest.raises(ThreatModelError):
        A.APGD()(*mlp, "l1:1.0")  # type: ignore[arg-type]  # a string is not a ThreatModel


def test_l1_direction_is_sparse_unit_mass_and_respects_box() -> None:
    g = torch.tensor([[3.0, -2.0, 1.0, 0.5, -4.0, 0.1, 0.0, 2.5, -0.2, 1.5]])
    x_adv = torch.full_like(g, 0.5)
    x_adv[0, 4] = 0.0  # at the lower edge, gradient points further down: blocked
    d = l1_direction(g, x_adv, torch.tensor([0.3]), (0.0, 1.0))
    assert torch.allclose(d.abs().sum(), torch.tensor(1.0))
    assert d.nonzero()[:, 1].tolist() == [0, 1, 7]  # top 3 of the movable coordinates
    assert torch.equal(d[0, [0, 1, 7]].sign(), torch.tensor([1.0, -1.0, 1.0]))


def test_apgd_l1_at_least_as_strong_as_sparse_pgd(mlp) -> None:
    model, x, y = mlp
    threat = ThreatModel("l1", 0.5)
    gen = torch.Generator().manual_seed(0)
    pgd = A.PGD(steps=20)(model, x, y, threat, generator=gen)
    apgd = A.APGD(steps=20)(model, x, y, threat, generator=gen)
    tgt = A.APGDT(steps=20, n_target_classes=4)(model, x, y, threat, generator=gen)
    assert 0.1 * len(y) < int(pgd.success.sum()) < 0.9 * len(y)
    assert int(apgd.success.sum()) >= int(pgd.success.sum()) - 2
    assert int(tgt.success.sum()) >= int(pgd.success.sum())
    for r in (apgd, tgt):
        assert bool(threat.contains(r.x_adv, x).all())
