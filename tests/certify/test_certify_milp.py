"""MILP verification: exact minima lie between the CROWN bound and the attack margin; counterexamples
are real; unsupported layers and norms give typed errors."""
from __future__ import annotations

import pytest
import torch
from _certify_nets import convnet, margin, mlp, strong_attack_margin
from torch import nn

from fortify.certify import CERTIFIERS
from fortify.errors import ThreatModelError, UnsupportedLayerError
from fortify.models import Normalized
from fortify.threat import ThreatModel


@pytest.mark.parametrize("threat", [ThreatModel("linf", 0.05), ThreatModel("l1", 0.4)], ids=str)
def test_exact_minimum_is_sandwiched_and_attained(threat: ThreatModel) -> None:
    net = Normalized(mlp(seed=10, h=10), [0.5], [0.25]).eval()
    x = torch.rand(6, 1, 3, 4)
    y = net(x).argmax(1)
    exact = CERTIFIERS.get("milp")(exact=True, time_limit=20)(net, x, y, threat)
    crown = CERTIFIERS.get("crown")()(net, x, y, threat).lower_margin
    alpha = CERTIFIERS.get("alpha-crown")()(net, x, y, threat).lower_margin
    attack = strong_attack_margin(net, x, y, threat, steps=60, restarts=4)
    assert all(s in ("verified", "counterexample") for s in exact.status)
    assert bool((crown <= exact.lower_margin + 1e-4).all())
    assert bool((alpha <= exact.lower_margin + 1e-4).all())
    assert bool((alpha >= crown - 1e-6).all())
    assert bool((exact.lower_margin <= attack + 1e-4).all())
    # sampled points of the threat set never go below the exact minimum
    xs = threat.random_init(x.repeat(300, 1, 1, 1))
    sampled = margin(net(xs), y.repeat(300)).reshape(300, -1).amin(0)
    assert bool((sampled >= exact.lower_margin - 1e-4).all())


def test_counterexamples_are_real_and_verified_points_hold() -> None:
    net = Normalized(mlp(seed=10, h=10), [0.5], [0.25]).eval()
    x = torch.rand(8, 1, 3, 4)
    y = net(x).argmax(1)
    threat = ThreatModel("linf", 0.06)
    cert = CERTIFIERS.get("milp")(time_limit=20)(net, x, y, threat)
    status = cert.status or []
    assert "counterexample" in status and "verified" in status
    cex = cert.extra["counterexample"]
    for i, s in enumerate(status):
        if s == "counterexample":
            xi = cex[i:i + 1]
            assert bool(threat.contains(xi, x[i:i + 1]).all())
            assert int(net(xi).argmax(1)) != int(y[i])
            assert float(cert.lower_margin[i]) <= 0
        elif s == "verified":
            assert bool(cert.certified[i]) and float(cert.lower_margin[i]) > 0
    attack = strong_attack_margin(net, x, y, threat)
    assert bool((attack[cert.certified] > 0).all())


def test_timeout_is_reported_with_a_sound_bound() -> None:
    net = mlp(seed=2, d=12, h=40, depth=3, scale=3.0)
    x = torch.rand(1, 1, 3, 4)
    y = net(x).argmax(1)
    threat = ThreatModel("linf", 0.3)
    cert = CERTIFIERS.get("milp")(time_limit=0.05, exact=True)(net, x, y, threat)
    assert cert.status is not None and cert.status[0] in ("timeout", "counterexample")
    if cert.status[0] == "timeout":
        assert float(cert.lower_margin[0]) <= float(strong_attack_margin(net, x, y, threat)[0]) + 1e-4


def test_milp_rejects_maxpool_and_l2_with_typed_errors() -> None:
    net = convnet(seed=1)
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(UnsupportedLayerError, match=r"'0\.2'.*MaxPool"):
        CERTIFIERS.get("milp")()(net, x, torch.zeros(1, dtype=torch.long), ThreatModel("linf", 0.01))
    with pytest.raises(ThreatModelError, match="l2"):
        CERTIFIERS.get("milp")()(mlp(seed=0), torch.rand(1, 1, 3, 4), torch.zeros(1, dtype=torch.long),
                                 ThreatModel("l2", 0.1))
    with pytest.raises(UnsupportedLayerError, match="Tanh"):
        CERTIFIERS.get("milp")()(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)),
                                 torch.rand(1, 1, 2, 2), torch.zeros(1, dtype=torch.long), ThreatModel("linf", 0.1))


def test_milp_refuses_a_model_too_large_before_solving(monkeypatch: pytest.MonkeyPatch) -> None:
    from fortify.certify import milp as milp_mod
    from fortify.certify.bounds import InputSet
    from fortify.certify.crown import layer_bounds
    from fortify.certify.graph import build_ops
    from fortify.errors import ResourceError

    net = mlp(seed=2, d=12, h=40, depth=3, scale=3.0)
    x = torch.rand(3, 1, 3, 4)
    y = net(x).argmax(1)
    threat = ThreatModel("linf", 0.3)
    ops = build_ops(net, tuple(x.shape[1:]), x)
    _, relus = milp_mod.affine_blocks(ops)
    bounds = layer_bounds(ops, InputSet.from_threat(x, threat), intermediate="crown")
    counts = milp_mod.count_binaries(bounds, relus, 3)
    manual = [sum(int(((bounds[t][0][i] < 0) & (bounds[t][1][i] > 0)).sum()) for t in relus) for i in range(3)]
    assert counts.tolist() == manual and 5 < max(manual) <= 120  # 3 hidden layers of 40 ReLUs

    def no_solver(*a: object, **k: object) -> None:
        raise AssertionError("the MILP solver ran although the model is too large")

    monkeypatch.setattr(milp_mod, "milp", no_solver)
    limit = max(manual) - 1
    with pytest.raises(milp_mod.MILPTooLargeError) as e:
        CERTIFIERS.get("milp")(max_binaries=limit)(net, x, y, threat)
    msg = str(e.value)
    assert isinstance(e.value, ResourceError) and "\n" not in msg
    assert f"image {int(counts.argmax())} has {max(manual)} unstable ReLUs" in msg
    assert f"max_binaries={limit}" in msg and "crown" in msg
    monkeypatch.undo()
    # at the limit (and with no limit) it runs
    cert = CERTIFIERS.get("milp")(max_binaries=max(manual), time_limit=0.05)(net, x[:1], y[:1], threat)
    assert len(cert.status or []) == 1
    assert CERTIFIERS.get("milp")(max_binaries=None).max_binaries is None
    assert CERTIFIERS.get("milp")().max_binaries == milp_mod.MAX_BINARIES


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_milp_max_binaries_must_be_a_positive_integer(bad: object) -> None:
    from fortify.errors import ConfigError

    with pytest.raises(ConfigError, match="max_binaries"):
        CERTIFIERS.get("milp")(max_binaries=bad)


def test_milp_refuses_per_feature_threats() -> None:
    import pytest
    import torch

    from fortify import models
    from fortify.certify import certify
    from fortify.errors import ThreatModelError
    from fortify.threat import ThreatModel

    net = models.create("mlp", in_shape=(4,), num_classes=2, hidden=[4]).eval()
    thr = ThreatModel("linf", 0.1, (0.0, 1.0), None, torch.full((4,), 0.5))
    with pytest.raises(ThreatModelError, match="per-feature"):
        certify(net, torch.rand(3, 4), torch.zeros(3, dtype=torch.long), thr, method="milp")
