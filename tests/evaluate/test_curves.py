"""Robustness curves against the analytic minimal distances of a linear classifier."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fortify.attacks import ATTACKS
from fortify.errors import ConfigError, ThreatModelError
from fortify.evaluate import RobustnessCurve, plot_curves, robustness_curve
from fortify.evaluate.curves import MIN_NORM_ATTACKS

DUAL = {"linf": 1.0, "l2": 2.0, "l1": float("inf")}


def linear_problem(n: int = 40, d: int = 12, seed: int = 0):
    """Binary linear model ``logits = [0, w.x + b]`` and points whose minimal adversarial distance in
    every norm is < 0.25, so the box [0, 1] never binds (points lie in [0.3, 0.7])."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)
    x = 0.3 + 0.4 * torch.rand(4 * n, d, generator=g)
    b = -(x @ w).median()
    m = x @ w + b
    dist = {k: m.abs() / w.norm(p=q) for k, q in DUAL.items()}
    keep = (dist["l1"] < 0.25) & (dist["linf"] > 1e-3)
    x, m = x[keep][:n], m[keep][:n]
    lin = nn.Linear(d, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([torch.zeros(d), w]))
        lin.bias.copy_(torch.tensor([0.0, float(b)]))
    y = (m > 0).long()
    return lin.eval(), x, y, {k: (m.abs() / w.norm(p=q)).double() for k, q in DUAL.items()}


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_curve_matches_analytic_distances(norm: str, tmp_path) -> None:
    if not any(a in ATTACKS and norm in ATTACKS.get(a).norms for a in ("fab", "deepfool", "apgd", "pgd", "fgsm")):
        pytest.skip("no attack for this norm registered yet")
    model, x, y, true = linear_problem()
    d = true[norm]
    grid = [float(e) for e in torch.linspace(0, float(d.max()) * 1.1, 12)]
    curve = robustness_curve(model, x, y, norm, grid, budget=0.5, checks=3)
    assert curve.norm == norm and len(curve.accuracy) == len(grid)
    assert all(a >= b for a, b in zip(curve.accuracy, curve.accuracy[1:]))  # monotone
    found = curve.distances.double()
    broken = torch.isfinite(found)
    # soundness: no attack can beat the exact minimal distance
    assert bool((found[broken] >= d[broken] * (1 - 1e-3) - 1e-6).all())
    min_norm = [a for a in MIN_NORM_ATTACKS if a in ATTACKS and norm in ATTACKS.get(a).norms]
    if min_norm:  # minimum-norm attacks find the exact distance within 1%
        assert bool(broken.all())
        assert bool((found <= d * 1.01 + 1e-6).all()), (found / d).max()
        exact = [float((d > e).double().mean()) for e in grid]
        assert max(abs(a - b) for a, b in zip(curve.accuracy, exact)) <= 1 / len(d) + 1e-6
    else:  # fixed-eps attacks on the grid: each point breaks at the first grid eps beyond its distance
        nxt = torch.tensor([min([e for e in grid if e >= v * 1.001] or [float("inf")]) for v in d.tolist()],
                           dtype=torch.float64)
        assert float((found <= nxt + 1e-6).double().mean()) >= 0.9
    png = plot_curves({"linear": curve}, tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curve_checks_and_errors(tmp_path) -> None:
    model, x, y, _ = linear_problem(n=10)
    if not any(a in ATTACKS for a in ("fab", "deepfool", "apgd", "pgd")):
        pytest.skip("no attack registered yet")
    c = robustness_curve(model, x, y, "l2", None, budget=0.3, checks=2, label="lin")
    assert isinstance(c, RobustnessCurve) and c.eps[0] == 0.0 and c.accuracy[0] == 1.0
    assert c.to_dict()["label"] == "lin"
    plot_curves([c], tmp_path / "a" / "b.png")
    assert (tmp_path / "a" / "b.png").exists()
    with pytest.raises(ThreatModelError):
        robustness_curve(model, x, y, "l3")
    with pytest.raises(ThreatModelError):
        robustness_curve(model, x, y, "l2", [0.1, -1.0])
    with pytest.raises(ConfigError):
        robustness_curve(model, x, y, "l2", [0.1], checks=-1)
    with pytest.raises(ConfigError):
        plot_curves([], tmp_path / "c.png")


def test_run_evaluation_writes_artifacts(tmp_path) -> None:
    import json

    from _eval_cases import trained_mlp
    from fortify.evaluate import run_evaluation

    model, x, y = trained_mlp()
    run = run_evaluation(model, x[:24], y[:24], ["linf:0.05", "l2:0.2"], out_dir=tmp_path / "ev", budget=0.1,
                         curve_points=12)
    doc = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert doc["robust_accuracy"] == pytest.approx(run.report.robust_accuracy)
    assert [c["norm"] for c in doc["curves"]] == ["linf", "l2"]
    assert (tmp_path / "ev" / "robustness_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "ev" / "state.safetensors").exists()
