"""Attacks against the analytic answer of a linear classifier (issue 3, item 8).

For ``z = W x + b`` with ``y = argmax z`` and no active box constraint, the exact smallest
adversarial perturbation in norm p has size ``min_{j != y} (z_y - z_j) / ||w_y - w_j||_q`` with
``q`` the dual norm (linf -> 1, l2 -> 2, l1 -> inf). The inputs sit at 0.5 +- 0.1 and every
minimal perturbation is < 0.3 per coordinate, so the box [0, 1] never binds.
Minimum-norm attacks must find it within 1%; fixed-eps attacks must succeed exactly on the points
whose distance is below eps (tested away from the boundary: eps = 0.97 d fails, 1.03 d succeeds).
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fortify.attacks as A
from fortify.threat import ThreatModel

C, D, N = 4, 20, 48
DUAL = {"linf": 1.0, "l2": 2.0, "l1": math.inf}


def linear_problem(dtype: torch.dtype = torch.float64) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 4-class linear model on 20-dim inputs, ``N`` points, labels = predictions."""
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(D, C).to(dtype)
    with torch.no_grad():
        model.weight.copy_(2 * torch.randn(C, D, generator=g))
        model.bias.copy_(-model.weight.sum(1) * 0.5 + 0.05 * torch.randn(C, generator=g))
    x = (0.5 + 0.1 * (2 * torch.rand(N, D, generator=g) - 1)).to(dtype)
    with torch.no_grad():
        y = model(x).argmax(1)
    assert len(set(y.tolist())) == C
    return model, x, y


def exact_distance(model: nn.Linear, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
    """Analytic minimal adversarial distance ``(N,)`` in ``norm`` (box inactive)."""
    with torch.no_grad():
        z = model(x)
        w = model.weight
        dw = w[y][:, None, :] - w[None, :, :]  # (N, C, D)
        d = (z.gather(1, y[:, None]) - z) / dw.norm(p=DUAL[norm], dim=2).clamp_min(1e-30)
        d[torch.arange(x.shape[0]), y] = math.inf
        return d.min(dim=1).values


def test_problem_keeps_box_inactive() -> None:
    model, x, y = linear_problem()
    for norm in DUAL:
        assert float(exact_distance(model, x, y, norm).max()) < 0.3


def _check_fixed_eps(attack: A.Attack, norm: str) -> None:
    model, x, y = linear_problem()
    d = exact_distance(model, x, y, norm)
    gen = torch.Generator().manual_seed(1)
    for eps in d.quantile(torch.tensor([0.25, 0.5, 0.75], dtype=d.dtype)).tolist():
        threat = ThreatModel(norm, eps)
        res = attack(model, x, y, threat, generator=gen)
        assert bool(threat.contains(res.x_adv, x).all())
        below, above = d <= eps / 1.03, d >= eps / 0.97
        assert bool(res.success[below].all()), f"{norm} eps={eps:.4f}: missed points with d < eps"
        assert not bool(res.success[above].any()), f"{norm} eps={eps:.4f}: 'broke' points with d > eps"


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_pgd_succeeds_exactly_below_eps(norm: str) -> None:
    _check_fixed_eps(A.PGD(steps=50, restarts=5, loss="margin"), norm)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_apgd_succeeds_exactly_below_eps(norm: str) -> None:
    _check_fixed_eps(A.APGD(steps=50, restarts=5, loss="dlr"), norm)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_apgd_t_succeeds_exactly_below_eps(norm: str) -> None:
    _check_fixed_eps(A.APGDT(steps=50), norm)


def _check_min_norm(attack: A.Attack, norm: str, rtol: float = 0.01) -> torch.Tensor:
    model, x, y = linear_problem()
    d = exact_distance(model, x, y, norm)
    found = attack.min_norm(model, x, y, norm, generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(found).all())
    assert bool((found >= d * (1 - 1e-6)).all()), "found a point closer than the exact minimum"
    ratio = found / d
    assert float(ratio.max()) <= 1 + rtol, f"{norm}: worst ratio {float(ratio.max()):.4f}"
    return ratio


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_fab_finds_exact_minimal_distance(norm: str) -> None:
    _check_min_norm(A.FAB(steps=20, n_target_classes=3), norm)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_untargeted_fab_finds_exact_minimal_distance(norm: str) -> None:
    _check_min_norm(A.FAB(steps=20, n_target_classes=0), norm)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_fab_eps_caps_the_minimum_norm_search(norm: str) -> None:
    model, x, y = linear_problem()
    d = exact_distance(model, x, y, norm)
    eps = float(d.median())
    threat = ThreatModel(norm, eps)
    res = A.FAB(steps=20)(model, x, y, threat)
    assert bool(threat.contains(res.x_adv, x).all())
    assert bool(res.success[d <= eps / 1.03].all()) and not bool(res.success[d >= eps / 0.97].any())


def test_cw_finds_exact_minimal_l2_distance() -> None:
    """Adam's lr is scaled to this problem's distances (~0.02, the default 1e-2 suits ~1)."""
    _check_min_norm(A.CW(steps=200, lr=1e-3, n_target_classes=3), "l2")


def test_plain_cw_reaches_the_boundary_of_the_strongest_other_class() -> None:
    """The original objective follows the top wrong class: exact where that class' boundary is
    the nearest one, never below the exact distance elsewhere."""
    model, x, y = linear_problem()
    d = exact_distance(model, x, y, "l2")
    found = A.CW(steps=200, lr=1e-3).min_norm(model, x, y, "l2")
    with torch.no_grad():
        z = model(x)
        dw = model.weight[y][:, None, :] - model.weight[None, :, :]
        pair = (z.gather(1, y[:, None]) - z) / dw.norm(dim=2).clamp_min(1e-30)
        pair[torch.arange(N), y] = math.inf
        z[torch.arange(N), y] = -math.inf
    same = pair.argmin(1) == z.argmax(1)
    assert 0.7 * N < int(same.sum()) < N  # both cases occur
    assert bool((found >= d * (1 - 1e-6)).all())
    assert float((found / d)[same].max()) <= 1.01


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_deepfool_finds_exact_minimal_distance(norm: str) -> None:
    """One exact step onto the closest boundary, times (1 + overshoot)."""
    ratio = _check_min_norm(A.DeepFool(overshoot=0.005), norm)
    assert torch.allclose(ratio, torch.full_like(ratio, 1.005), rtol=1e-6)
