"""Contract over EVERY registered attack: per-feature threat models on tabular data.

A table ``(N, 12)`` with per-feature bounds (features 0-3 in ``[0.2, 0.6]``, the rest in ``[0, 1]``),
four immutable features (4-7, ``mask`` False) and a per-feature ``scale`` (eps in standardised
units). For every attack and every norm it supports: ``x_adv`` never moves an immutable feature
(exactly equal), never leaves the per-feature bounds, stays inside the scaled ball (1e-6), and
``success`` agrees with the model's predictions at ``x_adv``. Certifier input boxes follow the same
set. Attacks use the tiny budgets of the attacks contract.
"""
from __future__ import annotations

import pytest
import torch

from fortify import models
from fortify.attacks import ATTACKS
from fortify.evaluate.presets import resolve_kwargs
from fortify.threat import NORMS, ThreatModel

from tests.contracts.test_attacks_contract import BUDGETS

F = 12
IMMUTABLE = slice(4, 8)
EPS = {"linf": 0.6, "l2": 1.5, "l1": 3.0}
CASES = [(a, n) for a in ATTACKS.names() for n in NORMS if n in ATTACKS.get(a).norms]


def tabular_threat(norm: str) -> ThreatModel:
    lo = torch.zeros(F)
    hi = torch.ones(F)
    lo[:4], hi[:4] = 0.2, 0.6
    mask = torch.ones(F, dtype=torch.bool)
    mask[IMMUTABLE] = False
    scale = torch.linspace(0.1, 0.5, F)
    return ThreatModel(norm, EPS[norm], (lo, hi), mask=mask, scale=scale)


def table(n: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = tabular_threat("linf")
    lo, hi = t.bounds
    x = (lo + (hi - lo) * torch.rand(n, F, generator=g, dtype=torch.float64)).float()
    x[0, :4] = 0.6  # at the upper per-feature bound
    x[1, 8:] = 0.0  # at the lower bound
    return x, torch.randint(0, 3, (n,), generator=g)


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create("mlp", in_shape=(F,), num_classes=3)


@pytest.mark.parametrize("name,norm", CASES, ids=[f"{a}-{n}" for a, n in CASES])
def test_attack_respects_mask_bounds_and_scaled_ball(name: str, norm: str) -> None:
    torch.set_num_threads(1)
    kwargs, _ = resolve_kwargs(name, BUDGETS.get(name, {}))
    attack = ATTACKS.get(name)(**kwargs)
    threat = tabular_threat(norm)
    net = model()
    x, y = table()
    res = attack(net, x, y, threat, generator=torch.Generator().manual_seed(3))
    xa = res.x_adv
    assert xa.shape == x.shape and xa.dtype == x.dtype
    assert torch.equal(xa[:, IMMUTABLE], x[:, IMMUTABLE]), "an immutable feature moved"
    lo, hi = (b.float() for b in threat.bounds)
    assert bool((xa >= lo - 1e-6).all()) and bool((xa <= hi + 1e-6).all()), "left the per-feature bounds"
    dist = threat.distance(xa.double(), x.double())
    assert bool((dist <= threat.eps + 1e-6).all()), f"outside the scaled ball: {float(dist.max())} > {threat.eps}"
    with torch.no_grad():
        pred = net(xa).argmax(1)
    assert torch.equal(res.success, pred != y)


@pytest.mark.parametrize("name", ["pgd", "apgd", "square", "nes"])
def test_attacks_still_search_the_free_features(name: str) -> None:
    """Not a trivial pass: strong enough attacks move the free features and break some points."""
    torch.set_num_threads(1)
    attack = ATTACKS.create(name, **({"queries": 400} if name in ("square", "nes") else {"steps": 20}))
    threat = tabular_threat("linf").with_eps(3.0)
    net = model()
    x, _ = table(30)
    with torch.no_grad():
        y = net(x).argmax(1)  # every point starts correctly classified
    res = attack(net, x, y, threat, generator=torch.Generator().manual_seed(0))
    assert bool(res.success.any())
    free = torch.ones(F, dtype=torch.bool)
    free[IMMUTABLE] = False
    assert bool((res.x_adv[:, free] != x[:, free]).any())
    assert torch.equal(res.x_adv[:, IMMUTABLE], x[:, IMMUTABLE])


def test_input_box_for_certifiers_is_the_tightest_box_of_the_set() -> None:
    """Certifiers' interval inputs: bounds per feature, zero width on immutable features, radius
    ``eps * scale``; every sampled point of the set lies inside."""
    threat = tabular_threat("l2")
    x, _ = table(5)
    lo, hi = threat.input_box(x)
    assert torch.equal(lo[:, IMMUTABLE], x[:, IMMUTABLE]) and torch.equal(hi[:, IMMUTABLE], x[:, IMMUTABLE])
    blo, bhi = (b.float() for b in threat.bounds)
    assert bool((lo >= blo - 1e-7).all()) and bool((hi <= bhi + 1e-7).all())
    r = threat.eps * threat.scale.float()
    free = threat.mask
    assert torch.allclose(hi[:, free], torch.minimum(x + r, bhi)[:, free])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        p = threat.random_init(x, g)
        assert bool(((p >= lo - 1e-6) & (p <= hi + 1e-6)).all())
    # dual-norm radius: the scaled ball lies inside the unscaled ball of radius eps * max(scale)
    assert threat.dual_radius() == pytest.approx(threat.eps * float(threat.scale[free].max()))


@pytest.mark.parametrize("method", ["ibp", "crown"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_certifiers_use_the_per_feature_set_soundly(method: str, norm: str) -> None:
    """IBP / CROWN on the tabular model: the certified lower margin is below the margin of every
    point the attacks and random sampling find in the set; with every feature immutable the set is
    ``{x}`` and the bound is the exact clean margin."""
    from fortify.certify import CERTIFIERS

    torch.set_num_threads(1)
    net = model().eval()
    x, _ = table(6)
    with torch.no_grad():
        y = net(x).argmax(1)
    threat = tabular_threat(norm).with_eps(0.3)
    cert = CERTIFIERS.get(method)()(net, x, y, threat)

    def margin(z: torch.Tensor) -> torch.Tensor:
        other = z.clone()
        other[torch.arange(len(y)), y] = float("-inf")
        return z.gather(1, y[:, None]).squeeze(1) - other.amax(1)

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(30):
            assert bool((cert.lower_margin <= margin(net(threat.random_init(x, g))) + 1e-5).all())
        pgd = ATTACKS.create("pgd", steps=20, loss="margin")(net, x, y, threat).x_adv
        assert bool((cert.lower_margin <= margin(net(pgd)) + 1e-5).all())
    frozen_all = ThreatModel(norm, 5.0, threat.bounds, mask=torch.zeros(F, dtype=torch.bool), scale=threat.scale)
    exact = CERTIFIERS.get(method)()(net, x, y, frozen_all)
    with torch.no_grad():
        assert torch.allclose(exact.lower_margin, margin(net(x)), atol=1e-4)
