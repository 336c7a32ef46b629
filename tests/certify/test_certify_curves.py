"""certified_accuracy / curves / plot: the integrator-facing API."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _certify_nets import mlp

from fortify.certify import (
    CERTIFIERS,
    CertifiedCurve,
    certified_accuracy,
    certified_accuracy_curve,
    certify,
    plot_certified_curves,
)
from fortify.errors import ConfigError, ThreatModelError, UnknownNameError
from fortify.models import Normalized
from fortify.threat import ThreatModel


def test_registry_and_certified_accuracy_agree_with_certificates() -> None:
    assert set(CERTIFIERS.names()) >= {"ibp", "crown", "crown-ibp", "smoothing", "milp"}
    net = Normalized(mlp(seed=10), [0.5], [0.25]).eval()
    x = torch.rand(30, 1, 3, 4)
    y = net(x).argmax(1)
    y[:5] = (y[:5] + 1) % 4  # wrong labels are never certified
    th = ThreatModel("linf", 0.02)
    cert = certify(net, x, y, th, "crown")
    assert not bool(cert.certified[:5].any())
    assert certified_accuracy(net, x, y, th, "crown") == pytest.approx(float(cert.certified.float().mean()))
    with pytest.raises(UnknownNameError, match="crown"):
        certify(net, x, y, th, "crwn")


def test_bound_curves_are_monotone_and_plot_is_written(tmp_path: Path) -> None:
    net = Normalized(mlp(seed=10), [0.5], [0.25]).eval()
    x = torch.rand(30, 1, 3, 4)
    y = net(x).argmax(1)
    eps = [0.0, 0.01, 0.02, 0.04, 0.08]
    curves = [certified_accuracy_curve(net, x, y, "linf", eps, m) for m in ("ibp", "crown")]
    for cv in curves:
        assert isinstance(cv, CertifiedCurve) and cv.n == 30 and cv.eps == eps
        assert cv.accuracy[0] == 1.0  # eps = 0: every correctly classified point
        assert all(a >= b for a, b in zip(cv.accuracy, cv.accuracy[1:]))
    assert all(c >= i for c, i in zip(curves[1].accuracy, curves[0].accuracy))
    out = plot_certified_curves(curves, tmp_path / "sub" / "curve.png")
    assert out.exists() and out.read_bytes()[:4] == b"\x89PNG"
    assert curves[0].as_dict()["method"] == "ibp"
    with pytest.raises(ThreatModelError):
        certified_accuracy_curve(net, x, y, "linf", [-0.1], "ibp")
    with pytest.raises(ConfigError):
        plot_certified_curves([], tmp_path / "x.png")
