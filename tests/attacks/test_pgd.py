"""PGD against an independent, straightforward reference loop (same seed, same start) and
behavioural properties (targeted hits, restarts only help, threat-model containment)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fortify.attacks as A
from fortify.errors import ConfigError
from fortify.threat import ThreatModel


def mlp_problem(n: int = 32) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Random 20-16-5 MLP, inputs at 0.5 +- 0.1 (box inactive for the radii below), y = predictions."""
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.Tanh(), nn.Linear(16, 5))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        model[0].weight.mul_(0.5)
        model[0].bias.copy_(-0.5 * model[0].weight.sum(1) + 0.1 * model[0].bias)  # centred at x = 0.5
    x = 0.5 + 0.1 * (2 * torch.rand(n, 20, generator=g) - 1)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def reference_l1_ball(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Duchi et al. 2008 sort-based projection onto the L1 ball (rows of ``delta``)."""
    a = delta.abs()
    s = a.sort(dim=1, descending=True).values
    cs = s.cumsum(1)
    k = torch.arange(1, a.shape[1] + 1, dtype=a.dtype)
    rho = ((s - (cs - eps) / k) > 0).sum(1, keepdim=True)
    theta = ((cs.gather(1, rho - 1) - eps) / rho).clamp_min(0)
    out = delta.sign() * (a - theta).clamp_min(0)
    return torch.where(a.sum(1, keepdim=True) <= eps, delta, out)


def reference_pgd(model, x, y, norm, eps, steps, alpha, gen, sparsity=0.05):
    """Plain PGD loop: CE ascent, clamp/radial/Duchi projection, keeps the max-margin iterate."""
    xa = ThreatModel(norm, eps).random_init(x, gen)
    best, best_m = x.clone(), torch.full((x.shape[0],), -float("inf"))
    for k in range(steps + 1):
        xg = xa.clone().requires_grad_(True)
        z = model(xg)
        (g,) = torch.autograd.grad(F.cross_entropy(z, y, reduction="sum"), xg)
        zo = z.detach().clone()
        zo[torch.arange(len(y)), y] = -float("inf")
        m = zo.max(1).values - z.detach().gather(1, y[:, None]).squeeze(1)
        upd = m > best_m
        best[upd], best_m[upd] = xa[upd], m[upd]
        if k == steps:
            break
        if norm == "linf":
            xa = torch.min(torch.max(xa + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
        elif norm == "l2":
            step = xa + alpha * g / g.norm(dim=1, keepdim=True)
            dlt = step - x
            xa = (x + dlt * (eps / dlt.norm(dim=1, keepdim=True)).clamp(max=1)).clamp(0, 1)
        else:
            kq = max(1, round(sparsity * x.shape[1]))
            top = g.abs().topk(kq, dim=1).indices
            e = torch.zeros_like(g).scatter(1, top, g.gather(1, top).sign() / kq)
            xa = (x + reference_l1_ball(xa + alpha * e - x, eps)).clamp(0, 1)
    return best


@pytest.mark.parametrize("norm,eps", [("linf", 0.01), ("l2", 0.03), ("l1", 0.1)])
def test_pgd_matches_reference_loop(norm: str, eps: float) -> None:
    model, x, y = mlp_problem()
    steps = 10
    ours = A.PGD(steps=steps, early_stop=False)(model, x, y, ThreatModel(norm, eps), generator=torch.Generator().manual_seed(3))
    ref = reference_pgd(model, x, y, norm, eps, steps, 2.5 / steps * eps, torch.Generator().manual_seed(3))
    assert torch.allclose(ours.x_adv, ref, atol=1e-5), float((ours.x_adv - ref).abs().max())
    with torch.no_grad():
        ref_success = model(ref).argmax(1) != y
    assert torch.equal(ours.success, ref_success)
    assert 0 < int(ours.success.sum()) < len(y)  # a non-trivial comparison


@pytest.mark.parametrize("norm,eps", [("linf", 0.01), ("l2", 0.03), ("l1", 0.1)])
def test_early_stop_keeps_reference_successes(norm: str, eps: float) -> None:
    model, x, y = mlp_problem()
    threat = ThreatModel(norm, eps)
    full = A.PGD(steps=10, early_stop=False)(model, x, y, threat, generator=torch.Generator().manual_seed(3))
    fast = A.PGD(steps=10)(model, x, y, threat, generator=torch.Generator().manual_seed(3))
    assert torch.equal(full.success, fast.success)  # a sample stops only once it is already adversarial
    assert fast.grad_evals < full.grad_evals
    assert bool(threat.contains(fast.x_adv, x).all())


def test_restarts_only_add_successes() -> None:
    model, x, y = mlp_problem(64)
    threat = ThreatModel("linf", 0.005)
    one = A.PGD(steps=5, restarts=1)(model, x, y, threat, generator=torch.Generator().manual_seed(0))
    five = A.PGD(steps=5, restarts=5)(model, x, y, threat, generator=torch.Generator().manual_seed(0))
    assert bool((five.success | ~one.success).all())
    assert five.grad_evals > one.grad_evals  # later restarts ran on the still-robust points


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.4), ("l1", 1.5)])
@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_targeted_hits_target(norm: str, eps: float, loss: str) -> None:
    model, x, y = mlp_problem()
    target = (y + 1) % 5
    threat = ThreatModel(norm, eps)
    res = A.PGD(steps=40, loss=loss)(model, x, y, threat, targeted=target, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred == target)
    assert float(res.success.float().mean()) >= 0.9
    assert bool(threat.contains(res.x_adv, x).all())


def test_bounds_respected_near_box_edge() -> None:
    model, x, y = mlp_problem()
    x = x.clone()
    x[:, :10] = 0.0  # half the coordinates on the lower edge
    with torch.no_grad():
        y = model(x).argmax(1)
    for norm, eps in [("linf", 0.3), ("l2", 1.0), ("l1", 3.0)]:
        threat = ThreatModel(norm, eps)
        res = A.PGD(steps=10)(model, x, y, threat, generator=torch.Generator().manual_seed(0))
        assert bool(threat.contains(res.x_adv, x).all())
        assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"restarts": 0}, {"loss": "hinge"}, {"step_ratio": -1.0},
                                    {"l1_sparsity": 0.0}])
def test_bad_config_is_typed(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        A.PGD(**kwargs)
