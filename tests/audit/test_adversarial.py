"""Adaptive attack on classifier + detector: its examples stay in the threat model, and it lowers the detection
AUROC of the static attack on a toy; NES (score-based) also works; calibration on adversarial examples."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fortify.audit.adversarial import AdaptiveDetectorAttack, adversarial_calibration, adversarial_detection
from fortify.audit.detect import DETECTORS
from fortify.errors import ConfigError, InputError
from fortify.models.state import fingerprint
from fortify.threat import ThreatModel


def images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes of 1x8x8 images: a bright bar (row, column or diagonal) on noise, values in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = 0.5 * torch.rand(n, 1, 8, 8, generator=g)
    idx = torch.arange(8)
    for i in range(n):
        k = int(y[i])
        if k == 0:
            x[i, 0, 3:5, :] += 0.3
        elif k == 1:
            x[i, 0, :, 3:5] += 0.3
        else:
            x[i, 0, idx, idx] += 0.3
    return x.clamp(0, 1), y


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = images(240, 0)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval(), x, y


def test_adaptive_attack_stays_in_the_threat_model_and_lowers_auroc(setup) -> None:  # type: ignore[no-untyped-def]
    net, x, y = setup
    xt, yt = images(60, 1)
    dets = {n: DETECTORS.create(n).fit(net, x, y) for n in ("mahalanobis", "energy")}
    before = fingerprint(net)
    rep = adversarial_detection(net, dets, xt, yt, attacks={"pgd": {"steps": 10}}, eps=(0.15,),
                                adaptive={"steps": 20})
    assert fingerprint(net) == before
    for static, adaptive in rep.pairs():
        assert adaptive is not None and static.auroc is not None and adaptive.auroc is not None
        assert adaptive.success_rate > 0.5
        assert adaptive.auroc < static.auroc - 0.05 or adaptive.auroc < 0.55, (static, adaptive)
        assert adaptive.evasion_rate >= static.evasion_rate
    assert "pgd@0.15" in rep.calibration


@pytest.mark.parametrize("grad,mode", [("autograd", "orthogonal"), ("nes", "weighted")])
def test_adaptive_examples_inside_the_ball(setup, grad: str, mode: str) -> None:  # type: ignore[no-untyped-def]
    net, x, y = setup
    fd = DETECTORS.create("mahalanobis").fit(net, x, y)
    xt, yt = images(12, 2)
    threat = ThreatModel("linf", 0.1)
    atk = AdaptiveDetectorAttack(fd, tau=fd.threshold(x), sigma=1.0, steps=5, detector_grad=grad, samples=4, mode=mode)
    res = atk(net, xt, yt, threat, generator=torch.Generator().manual_seed(0))
    assert bool(threat.contains(res.x_adv, xt).all())
    assert float((res.x_adv - xt).abs().max()) <= 0.1 + 1e-6 and 0 <= float(res.x_adv.min())
    assert float(res.x_adv.max()) <= 1


def test_errors_and_calibration(setup) -> None:  # type: ignore[no-untyped-def]
    net, x, y = setup
    with pytest.raises(ConfigError):
        AdaptiveDetectorAttack("energy", tau=0.0)  # type: ignore[arg-type]
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    fd = DETECTORS.create("energy").fit(other, x, y)
    with pytest.raises(InputError):
        adversarial_detection(net, {"energy": fd}, x[:5], y[:5])
    clean = adversarial_calibration(net, x[:60], y[:60], eps=0.0, options={"steps": 2})
    adv = adversarial_calibration(net, x[:60], y[:60], eps=0.2, options={"steps": 10})
    assert adv.accuracy < clean.accuracy and adv.ece > clean.ece
