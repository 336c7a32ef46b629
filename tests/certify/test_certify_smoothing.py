"""Randomized smoothing against scipy references and analytic smoothed classifiers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import ndtri
from scipy.stats import beta, norm
from torch import nn

from fortify.certify import CERTIFIERS, Smoothing, certified_accuracy_curve, clopper_pearson_lower
from fortify.errors import ConfigError, ThreatModelError
from fortify.threat import ThreatModel


class Halfspace(nn.Module):
    """Two-class linear classifier ``sign(w . x + b)`` on flattened inputs: logits ``(s, -s)``."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.lin = nn.Linear(w.numel(), 1)
        with torch.no_grad():
            self.lin.weight.copy_(w.reshape(1, -1))
            self.lin.bias.fill_(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.lin(x.flatten(1))
        return torch.cat([s, -s], dim=1)


def test_clopper_pearson_matches_scipy_beta() -> None:
    n, alpha = 500, 0.001
    k = np.array([0, 1, 7, 250, 499, 500])
    ref = np.where(k > 0, beta.ppf(alpha, np.maximum(k, 1), n - k + 1), 0.0)
    np.testing.assert_allclose(clopper_pearson_lower(k, n, alpha), ref, rtol=1e-10, atol=1e-12)


def test_radius_is_sigma_phi_inv_of_clopper_pearson_bound() -> None:
    torch.manual_seed(0)
    net = Halfspace(torch.randn(6), 0.1).eval()
    x = torch.rand(12, 1, 2, 3)
    sm = Smoothing(sigma=0.5, n0=32, n=400, alpha=0.01, batch_size=256)
    res = sm.certify(net, x)
    for i in range(len(x)):
        c = int(res.prediction[i])
        top = int(res.counts[i].argmax()) if c < 0 else c
        k = int(res.counts[i, top])
        p = beta.ppf(0.01, k, 400 - k + 1) if k > 0 else 0.0
        if c >= 0:
            assert float(res.p_lower[i]) == pytest.approx(p, rel=1e-9)
            assert float(res.radius[i]) == pytest.approx(0.5 * norm.ppf(p), rel=1e-9)
        else:
            assert float(res.radius[i]) == 0.0 and p <= 0.5 + 1e-12
    assert int(res.counts.sum()) == 400 * len(x)


def test_constant_classifier_gets_the_analytic_radius() -> None:
    net = Halfspace(torch.zeros(4), 1.0).eval()  # always class 0
    x = torch.rand(3, 1, 2, 2)
    cert = CERTIFIERS.get("smoothing")(sigma=0.25, n0=10, n=200, alpha=0.001)(net, x, torch.zeros(3, dtype=torch.long),
                                                                               ThreatModel("l2", 0.4))
    expected = 0.25 * ndtri(0.001 ** (1 / 200))  # p_lower = alpha^(1/n) when every draw agrees
    torch.testing.assert_close(cert.radius, torch.full((3,), expected, dtype=torch.float32))
    assert bool(cert.certified.all())


def test_halfspace_radius_is_sound_and_close_to_true_distance() -> None:
    torch.manual_seed(1)
    w = torch.randn(8)
    net = Halfspace(w, -float(w.sum()) / 2).eval()
    x = torch.rand(10, 1, 2, 4)
    dist = (net.lin(x.flatten(1)).squeeze(1).abs() / w.norm()).double()  # exact l2 distance to the boundary
    sm = Smoothing(sigma=0.25, n0=50, n=4000, alpha=0.001, batch_size=4000)
    res = sm.certify(net, x)
    truth = torch.where(net(x)[:, 0] > net(x)[:, 1], 0, 1)
    # the smoothed classifier of a halfspace is the halfspace itself, with radius = distance
    done = res.prediction >= 0
    assert bool((res.prediction[done] == truth[done]).all())
    assert bool((res.radius <= dist + 1e-6).all())
    far = dist > 0.3
    assert bool((res.radius[far] > 0.6 * dist[far]).all())


def test_predict_abstains_on_the_boundary_and_decides_far_away() -> None:
    net = Halfspace(torch.tensor([1.0, -1.0]), 0.0).eval()
    x = torch.tensor([[[[0.5, 0.5]]], [[[0.9, 0.1]]]])
    pred = Smoothing(sigma=0.25, n=500, alpha=0.001).predict(net, x, torch.Generator().manual_seed(3))
    assert pred.tolist() == [-1, 0]


def test_smoothing_curve_is_monotone_and_errors_are_typed() -> None:
    net = Halfspace(torch.tensor([1.0, -1.0, 0.5, 0.0]), -0.25).eval()
    x = torch.rand(16, 1, 2, 2)
    y = net(x).argmax(1)
    cv = certified_accuracy_curve(net, x, y, "l2", [0.0, 0.1, 0.2, 0.4, 0.8], "smoothing", n0=20, n=200)
    assert all(a >= b for a, b in zip(cv.accuracy, cv.accuracy[1:]))
    assert cv.accuracy[0] > 0.5 and math.isclose(cv.meta["sigma"], 0.25)
    with pytest.raises(ThreatModelError, match="l2"):
        CERTIFIERS.get("smoothing")()(net, x, y, ThreatModel("linf", 0.1))
    with pytest.raises(ConfigError):
        Smoothing(sigma=0.0)


def test_smoothing_refuses_per_feature_threats() -> None:
    import pytest
    import torch

    from fortify import models
    from fortify.certify import certify
    from fortify.errors import ThreatModelError
    from fortify.threat import ThreatModel

    net = models.create("mlp", in_shape=(4,), num_classes=2, hidden=[4]).eval()
    thr = ThreatModel("l2", 0.1, (0.0, 1.0), torch.tensor([True, True, False, True]))
    with pytest.raises(ThreatModelError, match="isotropic"):
        certify(net, torch.rand(3, 4), torch.zeros(3, dtype=torch.long), thr, method="smoothing")
