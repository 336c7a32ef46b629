"""CW-L2 on a small trained MLP: targeted mode, confidence kappa, eps cap consistency, strength
against PGD, the box, bad input. The analytic check is in test_linear_reference.py."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fortify.attacks as A
from fortify.attacks.losses import margin_loss, targeted_margin_loss
from fortify.errors import ConfigError, ThreatModelError
from fortify.threat import ThreatModel

from test_apgd import trained_mlp  # same directory (pytest prepend import mode)


@pytest.fixture(scope="module")
def mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model, x, y = trained_mlp()
    return model, x[:40], y[:40]


def test_cw_distances_consistent_and_stronger_than_pgd(mlp) -> None:
    model, x, y = mlp
    cw = A.CW(steps=100, binary_search_steps=6)
    dist = cw.min_norm(model, x, y, "l2")
    assert bool(torch.isfinite(dist).all())
    eps = float(dist.median())
    threat = ThreatModel("l2", eps)
    res = cw(model, x, y, threat)
    assert torch.equal(res.success, dist <= eps)
    assert bool(threat.contains(res.x_adv, x).all())
    pgd = A.PGD(steps=50, restarts=2)(model, x, y, threat, generator=torch.Generator().manual_seed(0))
    assert int(res.success.sum()) >= int(pgd.success.sum()) - 1


def test_cw_targeted_and_kappa(mlp) -> None:
    model, x, y = mlp
    target = (y + 1) % 5
    threat = ThreatModel("l2", 5.0)
    res = A.CW(steps=100, binary_search_steps=6, kappa=1.0)(model, x, y, threat, targeted=target)
    with torch.no_grad():
        z = model(res.x_adv)
    assert torch.equal(res.success, z.argmax(1) == target)
    assert float(res.success.float().mean()) > 0.9
    assert float(targeted_margin_loss(z, target)[res.success].min()) >= 1.0 - 1e-4
    plain = A.CW(steps=100, binary_search_steps=6, kappa=0.5)(model, x, y, threat)
    with torch.no_grad():
        assert float(margin_loss(model(plain.x_adv), y)[plain.success].min()) >= 0.5 - 1e-4


def test_cw_stays_in_box(mlp) -> None:
    model, x, y = mlp
    x = x.clone()
    x[:, ::2] = 0.0
    x[:, 1::4] = 1.0
    with torch.no_grad():
        y = model(x).argmax(1)
    res = A.CW(steps=30, binary_search_steps=3)(model, x, y, ThreatModel("l2", 10.0))
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)
    # coordinates on the box edge start where tanh saturates (slow, as in the original attack),
    # but the free coordinates still break some points
    assert int(res.success.sum()) > 0


def test_cw_bad_config(mlp) -> None:
    model, x, y = mlp
    for kwargs in ({"steps": 0}, {"binary_search_steps": 0}, {"lr": 0.0}, {"kappa": -1.0}, {"n_target_classes": -1}):
        with pytest.raises(ConfigError):
            A.CW(**kwargs)
    with pytest.raises(ThreatModelError):
        A.CW()(model, x, y, ThreatModel("linf", 0.1))
