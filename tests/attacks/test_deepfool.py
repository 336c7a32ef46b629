"""DeepFool against a per-sample reference loop (full Jacobian, batch size 1) on a small trained
MLP, eps-cap consistency, and bad input. The analytic check is in test_linear_reference.py."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fortify.attacks as A
from fortify.errors import ConfigError, InputError, ThreatModelError
from fortify.threat import ThreatModel

from test_apgd import trained_mlp  # same directory (pytest prepend import mode)


@pytest.fixture(scope="module")
def mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model, x, y = trained_mlp()
    return model, x[:30], y[:30]


def reference_deepfool(model, x0, y0, norm, overshoot=0.02, steps=50, candidates=10):
    """Straightforward one-sample DeepFool with the full Jacobian of the logits."""
    with torch.no_grad():
        z0 = model(x0[None])[0]
    order = [int(c) for c in z0.argsort(descending=True) if int(c) != y0][: candidates - 1]
    r_tot = torch.zeros_like(x0)
    xa = x0.clone()
    for _ in range(steps):
        with torch.no_grad():
            if int(model(xa[None]).argmax()) != y0:
                break
        jac = torch.autograd.functional.jacobian(lambda v: model(v[None])[0], xa)
        with torch.no_grad():
            z = model(xa[None])[0]
        best = None
        for k in order:
            w = jac[k] - jac[y0]
            f = float(z[k] - z[y0])
            dual = float(w.abs().sum()) if norm == "linf" else float(w.norm())
            if best is None or abs(f) / dual < best[0]:
                best = (abs(f) / dual, f, w, dual)
        _, f, w, dual = best
        r_tot = r_tot + (abs(f) / dual * w.sign() if norm == "linf" else abs(f) / dual**2 * w)
        xa = (x0 + (1 + overshoot) * r_tot).clamp(0, 1)
    return xa


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_deepfool_matches_per_sample_reference(mlp, norm: str) -> None:
    model, x, y = mlp
    res = A.DeepFool()(model, x, y, ThreatModel(norm, 10.0))
    ref = torch.stack([reference_deepfool(model, x[i], int(y[i]), norm) for i in range(len(y))])
    assert torch.allclose(res.x_adv, ref, atol=1e-5), float((res.x_adv - ref).abs().max())
    assert bool(res.success.all())


def test_deepfool_eps_cap_and_strength(mlp) -> None:
    model, x, y = mlp
    df = A.DeepFool()
    dist = df.min_norm(model, x, y, "l2")
    eps = float(dist.median())
    threat = ThreatModel("l2", eps)
    res = df(model, x, y, threat)
    assert torch.equal(res.success, dist <= eps)
    assert bool(threat.contains(res.x_adv, x).all())
    # DeepFool overestimates distances on non-linear models, but not wildly:
    # PGD at half its distance breaks fewer points than DeepFool at its own
    pgd = A.PGD(steps=50)(model, x, y, ThreatModel("l2", 0.5 * eps), generator=torch.Generator().manual_seed(0))
    assert int(pgd.success.sum()) <= int(res.success.sum())


def test_deepfool_bad_input(mlp) -> None:
    model, x, y = mlp
    for kwargs in ({"steps": 0}, {"overshoot": 0.0}, {"candidates": 1}):
        with pytest.raises(ConfigError):
            A.DeepFool(**kwargs)
    with pytest.raises(ThreatModelError):
        A.DeepFool()(model, x, y, ThreatModel("l1", 1.0))
    with pytest.raises(InputError):
        A.DeepFool()(model, x, y, ThreatModel("l2", 1.0), targeted=y)
