"""Contract every registered certifier meets (``CERTIFIERS.names()`` at collection, every declared norm).

Soundness against two independent references on a tiny ReLU net:

* ``lower_margin <= z_y(x) - max_{j != y} z_j(x)``: ``x`` itself lies in the threat set, so a sound
  lower bound of the worst-case margin can never exceed the margin measured at ``x``;
* a point reported ``certified`` is not broken by PGD (20 steps, 3 restarts) inside the same threat.

Randomized smoothing certifies the *smoothed* classifier (its ``lower_margin`` is ``radius - eps``
in input-norm units, ``radius`` is set), so for certificates with a radius the references are the
smoothed classifier's: a certified point has ``radius >= eps``, and the base model's majority vote
under the smoothing noise at ``x`` is ``y`` (a 400-draw Monte-Carlo estimate, > 1/2).
"""
from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from torch import nn

from fortify.attacks import ATTACKS
from fortify.certify import CERTIFIERS
from fortify.threat import ThreatModel

#: radii small enough that a random 16-8-3 net has certified points, large enough to be non-trivial
EPS = {"linf": 0.02, "l2": 0.08, "l1": 0.3}
#: tiny budgets (passed when the constructor takes them)
TINY: dict[str, Any] = {"n0": 20, "n": 200, "time_limit": 10.0, "sigma": 0.25}
CASES = [(n, norm) for n in CERTIFIERS.names() for norm in getattr(CERTIFIERS.get(n), "norms", ("linf", "l2", "l1"))]


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def points(model: nn.Module, n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs in the box and the model's own labels (so margins at x are positive)."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 4, 4, generator=g) * 0.8 + 0.1
    with torch.no_grad():
        return x, model(x).argmax(1)


def margin_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        z = model(x)
    zy = z.gather(1, y[:, None]).squeeze(1)
    return zy - z.scatter(1, y[:, None], float("-inf")).amax(1)


def make(name: str) -> Any:
    params = inspect.signature(CERTIFIERS.get(name)).parameters
    return CERTIFIERS.create(name, **{k: v for k, v in TINY.items() if k in params})


@pytest.mark.parametrize("name,norm", CASES)
def test_certificates_are_sound(name: str, norm: str) -> None:
    model = tiny_net()
    x, y = points(model)
    threat = ThreatModel(norm, EPS[norm])
    cert = make(name)(model, x, y, threat)
    assert cert.lower_margin.shape == (x.shape[0],) and cert.certified.shape == (x.shape[0],)
    assert cert.certified.dtype == torch.bool and not bool(torch.isnan(cert.lower_margin).any())
    assert bool((cert.lower_margin[cert.certified] > 0).all()), "certified needs a positive lower margin"
    if cert.radius is not None:  # smoothing: a guarantee about the smoothed classifier
        sigma = float(getattr(make(name), "sigma"))
        assert bool((cert.radius[cert.certified] >= EPS[norm] - 1e-6).all())
        g = torch.Generator().manual_seed(7)
        xs = x[cert.certified]
        if xs.numel():
            noise = torch.randn((400, *xs.shape), generator=g) * sigma
            with torch.no_grad():
                votes = model((xs[None] + noise).flatten(0, 1)).argmax(1).view(400, -1)
            share = (votes == y[cert.certified][None]).float().mean(0)
            assert bool((share > 0.5).all()), share
        return
    assert bool((cert.lower_margin <= margin_at(model, x, y) + 1e-5).all()), "lower margin above the margin at x"
    assert bool(cert.certified.any()), f"{name} certified nothing at {threat}: the soundness check would be vacuous"
    if norm in ATTACKS.get("pgd").norms:
        xs, ys = x[cert.certified], y[cert.certified]
        res = ATTACKS.create("pgd", steps=20, restarts=3)(model, xs, ys, threat, generator=torch.Generator().manual_seed(0))
        assert not bool(res.success.any()), f"PGD broke {int(res.success.sum())} points {name} certified"
