"""The ``certify`` pipeline stage against references.

* A linear classifier: the exact worst-case margin under linf eps is
  ``z_y - z_j - eps * ||w_y - w_j||_1``, so an image is certifiable exactly when its minimal
  adversarial distance exceeds eps; CROWN is exact on it and every curve point must match.
* A random ReLU MLP: soundness (no certified image is broken by PGD with restarts), CROWN at least
  as tight as IBP at every radius, radius 0 = clean accuracy, the stage's headline equals an
  independent ``certified_accuracy`` call.
* Randomized smoothing: the curve is read off one certification run and matches an independent
  run with the same seed.
* Bad configuration and unsupported layers are refused with typed errors.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fortify.attacks import PGD
from fortify.certify import Smoothing, certified_accuracy
from fortify.pipeline.stages.certify import CertifyStage
from fortify.config import load_config
from fortify.errors import ConfigError, ThreatModelError, UnknownNameError, UnsupportedLayerError
from fortify.pipeline import RunContext
from fortify.store import RunStore
from fortify.threat import ThreatModel

from _certify_nets import convnet, mlp


def _ctx(tmp_path: Path, model: nn.Module, x: torch.Tensor, y: torch.Tensor, overrides: list[str]) -> RunContext:
    cfg = load_config(None, ["stages=[certify]", *overrides])
    store = RunStore(tmp_path / "s.db")
    run_id = store.start_run("run", argv=[], config=cfg.to_dict(), seed=0)
    ctx = RunContext(config=cfg, run_dir=tmp_path / run_id, run_id=run_id, store=store, quiet=True, model=model)
    ctx.run_dir.mkdir(parents=True)
    ctx.set_data("test", x, y)
    ctx.stage = "certify"
    return ctx


def _linear(n: int = 40, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(16, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(3, 16, generator=g))
        lin.bias.zero_()
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = 0.35 + 0.3 * torch.rand(n, 1, 4, 4, generator=g)
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    y[:3] = (y[:3] + 1) % 3
    w = lin.weight.detach()
    dist = torch.tensor([0.0 if int(z[i].argmax()) != int(y[i]) else
                         min(float((z[i, y[i]] - z[i, j]) / (w[y[i]] - w[j]).abs().sum()) for j in range(3) if j != y[i])
                         for i in range(n)])
    return model, x, y, dist


def test_linear_model_curve_is_exact(tmp_path: Path) -> None:
    model, x, y, dist = _linear()
    s = dist[dist > 0].sort().values
    eps = float((s[len(s) // 2] + s[len(s) // 2 + 1]) / 2)
    radii = [0.0, eps / 3, eps, 1.5 * eps]
    ctx = _ctx(tmp_path, model, x, y, [f"certify.threat='linf:{eps}'", f"certify.curve_eps={radii}",
                                       "certify.compare=[ibp]"])
    CertifyStage().run(ctx)
    m = ctx.metrics["certify"]
    assert m["certified_accuracy"] == pytest.approx(float((dist > eps).float().mean())) and m["n"] == 40
    doc = json.loads((ctx.run_dir / "certify" / "certification.json").read_text())
    assert [c["method"] for c in doc["curves"]] == ["crown", "ibp"]
    for c in doc["curves"]:
        for r, acc in zip(c["eps"], c["accuracy"]):
            near = float(((dist - r).abs() <= 1e-4 * max(r, 1e-3)).float().mean())
            assert abs(acc - float((dist > r).float().mean())) <= near + 1e-6, (c["method"], r)
    assert ctx.store.final_metrics(ctx.run_id)["certify/certified_accuracy"] == pytest.approx(m["certified_accuracy"])
    (sec,) = ctx.sections
    assert sec.title == "Certification" and sec.figures == ["certify/certified_curve.png"]
    assert (ctx.run_dir / "certify" / "certified_curve.png").stat().st_size > 0
    assert sec.tables[-1].headers == ["radius", "crown", "ibp"] and len(sec.tables[-1].rows) == 4


def test_relu_mlp_sound_and_crown_tighter_than_ibp(tmp_path: Path) -> None:
    model = mlp(seed=3, d=16, h=24, k=4, scale=2.0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(48, 1, 16, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:5] = (y[:5] + 1) % 4
    eps = 0.03
    ctx = _ctx(tmp_path, model, x, y, [f"certify.threat='linf:{eps}'", "certify.curve_points=4", "certify.compare=[ibp]"])
    res = CertifyStage().run(ctx)
    cert, (crown, ibp) = res.certificate, res.curves
    thr = ThreatModel("linf", eps)
    assert cert.certified_accuracy == pytest.approx(certified_accuracy(model, x, y, thr, "crown"))
    assert crown.eps == ibp.eps == pytest.approx([0.0, eps / 3, 2 * eps / 3, eps])
    assert crown.accuracy[0] == ibp.accuracy[0] == pytest.approx(43 / 48)  # radius 0: the clean accuracy
    assert all(c >= i for c, i in zip(crown.accuracy, ibp.accuracy))
    assert all(a >= b for a, b in zip(crown.accuracy, crown.accuracy[1:]))
    assert 0 < cert.certified_accuracy < 43 / 48
    # soundness: PGD with restarts breaks no certified image
    idx = cert.certified.nonzero().squeeze(1)
    adv = PGD(steps=40, restarts=3)(model, x[idx], y[idx], thr, generator=torch.Generator().manual_seed(1))
    assert not bool(adv.success.any())


def test_smoothing_curve_read_off_one_run(tmp_path: Path) -> None:
    model = mlp(seed=1, d=16, h=16, k=3, scale=3.0)
    x = torch.rand(24, 1, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x).argmax(1)
    ctx = _ctx(tmp_path, model, x, y, ["certify.method=smoothing", "certify.threat='l2:0.1'", "certify.sigma=0.2",
                                       "certify.samples=200", "certify.n0=20", "certify.seed=5",
                                       "certify.curve_points=5"])
    res = CertifyStage().run(ctx)
    cert, (curve,) = res.certificate, res.curves
    ref = Smoothing(sigma=0.2, n0=20, n=200, seed=5)(model, x, y, ThreatModel("l2", 0.1))
    assert torch.equal(cert.certified, ref.certified) and torch.allclose(cert.radius, ref.radius)
    good = ref.extra["prediction"] == y
    for r, acc in zip(curve.eps, curve.accuracy):
        assert acc == pytest.approx(float((good & (ref.radius >= r)).float().mean()))
    assert curve.eps[0] == 0 and curve.eps[-1] >= 2 * 0.2 and curve.accuracy[-1] <= curve.accuracy[0]
    m = ctx.metrics["certify"]
    assert m["abstain_rate"] == pytest.approx(float((ref.extra["prediction"] < 0).float().mean()))


def test_unsupported_layer_is_named(tmp_path: Path) -> None:
    net = convnet(seed=0)  # MaxPool2d: bound methods handle it, the MILP verifier does not
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = net(x).argmax(1)
    with pytest.raises(UnsupportedLayerError, match=r"layer '.*' \(MaxPool\)"):
        CertifyStage().run(_ctx(tmp_path, net, x, y, ["certify.method=milp", "certify.threat='linf:0.01'"]))
    tanh = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.GELU(), nn.Linear(8, 3)).eval()
    with pytest.raises(UnsupportedLayerError, match=r"layer '2' \(GELU\)"):
        CertifyStage().run(_ctx(tmp_path / "b", tanh, x, torch.zeros(4, dtype=torch.long), []))


@pytest.mark.parametrize("override, error, text", [
    ("certify.method=magic", UnknownNameError, "unknown certifier 'magic'; allowed:"),
    ("certify.method=smoothing", ThreatModelError, "'smoothing' does not support norm 'linf'"),
    ("certify.threat='linf:-0.1'", ThreatModelError, "eps"),
    ("certify.threat='l7:1'", ThreatModelError, "norm"),
    ("certify.threat=linf", ThreatModelError, "NORM:EPS"),
    ("certify.compare=[smoothing]", ConfigError, "cannot be compared"),
    ("certify.curve_points=1", ConfigError, "curve_points"),
    ("certify.curve_eps=[-1]", ThreatModelError, "curve_eps"),
    ("certify.sigma=0", ConfigError, "sigma"),
])
def test_bad_configuration_is_refused_at_validation(override: str, error: type, text: str) -> None:
    with pytest.raises(error, match=text.replace("(", r"\(")):
        load_config(None, [override])
