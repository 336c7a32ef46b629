"""FAB: behaviour on a small trained MLP (targets, monotonicity in targets/restarts, eps cap,
box) and the exact hyperplane-in-box step against a brute-force solver."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import optimize
from torch import nn

import fortify.attacks as A
from fortify.attacks._minnorm import hyperplane_box_step
from fortify.errors import ConfigError, InputError
from fortify.threat import ThreatModel

from test_apgd import trained_mlp  # same directory (pytest prepend import mode)

@pytest.fixture(scope="module")
def mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model, x, y = trained_mlp()
    return model, x[:40], y[:40]

def _reference_min_step(p: np.ndarray, w: np.ndarray, c: float, norm: str) -> float:
    """Independent solver: an LP for linf / l1 (scipy.optimize.linprog), SLSQP for l2."""
    n = p.size
    box = [(-pi, 1 - pi) for pi in p]
    if norm == "l2":
        r = optimize.minimize(lambda d: d @ d, np.zeros(n), jac=lambda d: 2 * d, bounds=box, method="SLSQP",
                              constraints=[{"type": "eq", "fun": lambda d: w @ d - c, "jac": lambda d: w}],
                              options={"ftol": 1e-14, "maxiter": 500})
        return float(np.sqrt(r.fun))
    if norm == "linf":  # variables (d, t): min t, -t <= d_i <= t
        cost = np.r_[np.zeros(n), 1.0]
        a_ub = np.block([[np.eye(n), -np.ones((n, 1))], [-np.eye(n), -np.ones((n, 1))]])
        r = optimize.linprog(cost, A_ub=a_ub, b_ub=np.zeros(2 * n), A_eq=np.r_[w, 0.0][None], b_eq=[c],
                             bounds=box + [(0, None)])
        return float(r.fun)
    # l1: d = u - v, u, v >= 0
    cost = np.ones(2 * n)
    bounds = [(0, 1 - pi) for pi in p] + [(0, pi) for pi in p]
    r = optimize.linprog(cost, A_eq=np.r_[w, -w][None], b_eq=[c], bounds=bounds)
    return float(r.fun)


def test_hyperplane_step_matches_independent_solver() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.rand(8, 6, generator=g, dtype=torch.float64)
    w = torch.randn(8, 6, generator=g, dtype=torch.float64)
    w[0, 1] = 0.0
    c = 0.6 * torch.randn(8, generator=g, dtype=torch.float64)
    room = torch.where(torch.sign(c)[:, None] * w > 0, 1 - p, p)
    feasible = (w.abs() * room).sum(1) >= c.abs()
    assert 2 <= int(feasible.sum()) < 8  # both cases occur
    for norm in ("linf", "l2", "l1"):
        d = hyperplane_box_step(p, w, c, norm, (0.0, 1.0))
        assert bool(((p + d) >= -1e-12).all() and ((p + d) <= 1 + 1e-12).all())
        assert torch.allclose((w * d).sum(1)[feasible], c[feasible], atol=1e-9)
        # infeasible: every useful coordinate pushed to the box towards the hyperplane
        assert torch.allclose(d.abs()[~feasible], (room * (w != 0))[~feasible], atol=1e-12)
        for i in feasible.nonzero().squeeze(1).tolist():
            ours = {"linf": d[i].abs().max(), "l2": d[i].norm(), "l1": d[i].abs().sum()}[norm]
            ref = _reference_min_step(p[i].numpy(), w[i].numpy(), float(c[i]), norm)
            assert abs(float(ours) - ref) <= 1e-6 * max(1.0, ref), (norm, i, float(ours), ref)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_fab_points_are_adversarial_at_reported_distance(mlp, norm: str) -> None:
    model, x, y = mlp
    fab = A.FAB(steps=20, n_target_classes=2)
    dist = fab.min_norm(model, x, y, norm)
    assert bool(torch.isfinite(dist).all())
    # consistency with the fixed-eps interface: capped at the median, success iff dist <= eps
    eps = float(dist.median())
    threat = ThreatModel(norm, eps)
    res = fab(model, x, y, threat)
    assert torch.equal(res.success, dist <= eps)
    assert bool(threat.contains(res.x_adv, x).all())
    # and at that radius FAB is at least as strong as PGD with restarts
    pgd = A.PGD(steps=50, restarts=2)(model, x, y, threat, generator=torch.Generator().manual_seed(0))
    assert int(res.success.sum()) >= int(pgd.success.sum())

def test_more_targets_and_restarts_never_hurt(mlp) -> None:
    model, x, y = mlp
    d1 = A.FAB(steps=15, n_target_classes=1).min_norm(model, x, y, "l2")
    d3 = A.FAB(steps=15, n_target_classes=3).min_norm(model, x, y, "l2")
    dr = A.FAB(steps=15, n_target_classes=1, restarts=2).min_norm(model, x, y, "l2", generator=torch.Generator().manual_seed(0))
    assert bool((d3 <= d1).all()) and bool((dr <= d1).all())
    assert float(d3.sum()) < float(d1.sum())

def test_fab_targeted_hits_target(mlp) -> None:
    model, x, y = mlp
    target = (y + 1) % 5
    threat = ThreatModel("l2", 2.0)
    res = A.FAB(steps=30)(model, x, y, threat, targeted=target)
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred == target)
    assert float(res.success.float().mean()) > 0.9

def test_fab_respects_box_when_it_binds(mlp) -> None:
    model, x, y = mlp
    x = x.clone()
    x[:, ::2] = 1.0
    with torch.no_grad():
        y = model(x).argmax(1)
    for norm in ("linf", "l2", "l1"):
        threat = ThreatModel(norm, 10.0)
        res = A.FAB(steps=10, n_target_classes=1)(model, x, y, threat)
        assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1

def test_fab_bad_config_and_min_norm_input() -> None:
    for kwargs in ({"steps": 0}, {"restarts": 0}, {"n_target_classes": -1}, {"eta": 0.5}, {"beta": 0.0},
                   {"alpha_max": 2.0}):
        with pytest.raises(ConfigError):
            A.FAB(**kwargs)
    with pytest.raises(InputError):
        A.FAB().min_norm(nn.Linear(3, 2), torch.rand(2, 3), torch.zeros(2, dtype=torch.long), "l0")
