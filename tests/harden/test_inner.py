"""The shared inner maximisation against analytic answers on linear models, and its contract
(containment, gradient accounting, no param.grad writes, exact reproducibility)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fortify.errors import ConfigError
from fortify.threat import ThreatModel
from fortify.train.adversarial.inner import ce_per_sample, kl_per_sample, msd_perturb, perturb


def binary_linear(d: int = 12) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Two-class linear model ``z = W x + b``: the CE loss is monotone in the margin
    ``(w_y - w_o) . x``, so its exact maximiser over the linf ball (box inactive) is
    ``x - eps * sign(w_y - w_o)`` and over the l2 ball ``x - eps * u / ||u||``."""
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(d, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, d, generator=g))
        lin.bias.zero_()
    x = 0.5 + 0.05 * (2 * torch.rand(8, d, generator=g) - 1)
    y = torch.tensor([0, 1] * 4)
    return lin, x, y


@pytest.mark.parametrize("norm,eps,steps,step", [("linf", 0.1, 20, None), ("l2", 0.3, 30, 0.3)])
def test_pgd_reaches_the_analytic_worst_case(norm: str, eps: float, steps: int, step: float | None) -> None:
    model, x, y = binary_linear()
    t = ThreatModel(norm, eps)
    # l2 from a random start: each long step + radial projection shrinks the off-axis part
    x_adv, evals = perturb(model, x, ce_per_sample(y), t, steps=steps, step_size=step,
                           generator=torch.Generator().manual_seed(0))
    w = model.weight.detach()
    u = w[y] - w[1 - y]  # gradient direction of the margin, (B, d)
    if norm == "linf":
        expected = x - eps * u.sign()
    else:
        expected = x - eps * u / u.norm(dim=1, keepdim=True)
    assert torch.allclose(x_adv, expected, atol=2e-3)
    assert evals == steps * x.shape[0]
    assert bool(t.contains(x_adv, x).all())


def test_fgsm_rs_step_is_projected_sign_step() -> None:
    model, x, y = binary_linear()
    t = ThreatModel("linf", 0.1)
    g = torch.Generator().manual_seed(3)
    start = t.random_init(x, torch.Generator().manual_seed(3))
    x_adv, evals = perturb(model, x, ce_per_sample(y), t, steps=1, step_size=0.125, generator=g)
    u = model.weight.detach()[y] - model.weight.detach()[1 - y]
    assert torch.allclose(x_adv, t.project(start - 0.125 * u.sign(), x))
    assert evals == x.shape[0]


def test_no_param_grad_flags_restored_and_reproducible() -> None:
    model, x, y = binary_linear()
    model.train()
    t = ThreatModel("l1", 1.0)
    a, _ = perturb(model, x, ce_per_sample(y), t, steps=5, generator=torch.Generator().manual_seed(0))
    b, _ = perturb(model, x, ce_per_sample(y), t, steps=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert model.training
    assert bool(t.contains(a, x).all())


def test_keep_best_never_worse_than_last() -> None:
    model, x, y = binary_linear()
    t = ThreatModel("linf", 0.2)
    loss = ce_per_sample(y)
    best, _ = perturb(model, x, loss, t, steps=3, step_size=0.5, keep_best=True, generator=torch.Generator().manual_seed(0))
    last, _ = perturb(model, x, loss, t, steps=3, step_size=0.5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert bool((loss(model(best)) >= loss(model(last)) - 1e-6).all())


def test_kl_loss_is_zero_at_the_clean_point_and_positive_away() -> None:
    model, x, _ = binary_linear()
    with torch.no_grad():
        clean = model(x)
        kl = kl_per_sample(clean)
        assert torch.allclose(kl(clean), torch.zeros(x.shape[0]), atol=1e-6)
        assert bool((kl(model(x + 0.2)) > 0).all())


def test_msd_stays_in_the_union_and_beats_each_single_norm_start() -> None:
    model, x, y = binary_linear()
    threats = [ThreatModel("linf", 0.05), ThreatModel("l2", 0.3), ThreatModel("l1", 1.0)]
    x_adv, evals = msd_perturb(model, x, y, threats, steps=10)
    inside = torch.stack([t.contains(x_adv, x) for t in threats]).any(dim=0)
    assert bool(inside.all()) and evals == 10 * x.shape[0]
    with torch.no_grad():
        clean_loss = F.cross_entropy(model(x), y, reduction="none")
        assert bool((F.cross_entropy(model(x_adv), y, reduction="none") > clean_loss).all())


def test_bad_steps_and_zero_eps() -> None:
    model, x, y = binary_linear()
    with pytest.raises(ConfigError, match="steps"):
        perturb(model, x, ce_per_sample(y), ThreatModel("linf", 0.1), steps=0)
    same, evals = perturb(model, x, ce_per_sample(y), ThreatModel("linf", 0.0), steps=3)
    assert torch.equal(same, x) and evals == 0
