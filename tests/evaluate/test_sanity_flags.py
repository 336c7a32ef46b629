"""The eps-sweep flags and the post-check thresholds, against constructed pathologies."""
from __future__ import annotations

import torch
from torch import nn

from fortify.evaluate import AttackSpec
from fortify.evaluate.eps_checks import box_covering_eps, eps_sweep_flags
from fortify.evaluate.sanity import count_threshold, pre_checks
from fortify.threat import ThreatModel

from _eval_cases import Quantize, Scaled, trained_mlp


def _linear_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 3)).eval()
    with torch.no_grad():  # class k wins near x_k = 1: every class reachable inside the box
        model[0].weight.copy_(0.1 * torch.randn(3, 8) + 4 * torch.eye(3, 8))
        model[0].bias.zero_()
    x = 0.3 + 0.4 * torch.rand(20, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def test_eps_sweep_flags_fire_on_pathological_predictions() -> None:
    model, x, y = _linear_problem()
    thr = ThreatModel("linf", 0.05)
    fgsm = AttackSpec("fgsm", "fgsm")

    def honest(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(z).argmax(1)

    ok = {f.name: f for f in eps_sweep_flags(model, honest, x, y, thr, fgsm, batch_size=64)}
    assert not ok["non_monotone_in_eps"].fired and not ok["large_eps_not_broken"].fired
    acc = ok["non_monotone_in_eps"].evidence["accuracy"]
    assert all(a >= b for a, b in zip(acc, acc[1:]))

    def banded(z: torch.Tensor) -> torch.Tensor:
        """Wrong only for perturbations of linf size in (0.04, 0.08): FGSM at 0.05 breaks every point,
        at 0.1 and at the box-covering eps none -- non-monotone, and large eps not reaching 0%."""
        d = (z - x).abs().amax(dim=1)
        return torch.where((d > 0.04) & (d < 0.08), (y + 1) % 3, y)

    bad = {f.name: f for f in eps_sweep_flags(model, banded, x, y, thr, fgsm, batch_size=64)}
    assert bad["non_monotone_in_eps"].fired and bad["non_monotone_in_eps"].evidence["rises"]
    assert bad["large_eps_not_broken"].fired
    assert bad["large_eps_not_broken"].evidence["eps"] == box_covering_eps(thr, 8) == 1.0


def test_box_covering_eps_and_threshold() -> None:
    assert box_covering_eps(ThreatModel("l2", 0.1), 16) == 4.0
    assert box_covering_eps(ThreatModel("l1", 0.1, (-1.0, 1.0)), 10) == 20.0
    assert count_threshold(10) == 2 and count_threshold(1000) == 10


def test_pre_checks_diagnose_without_false_alarms() -> None:
    m, x, y = trained_mlp()
    plain = pre_checks(m, x, y)
    assert not any(f.fired for f in plain.flags) and plain.attack_model is m
    q = pre_checks(nn.Sequential(Quantize(8), m), x, y)
    zf = next(f for f in q.flags if f.name == "zero_or_nan_gradients")
    assert zf.fired and zf.evidence["nondifferentiable_modules"] == ["0"]
    assert zf.evidence["zero_or_nan_after_remedy"] == 0.0
    s = pre_checks(Scaled(m, 1e4, False), x, y)
    sf = next(f for f in s.flags if f.name == "zero_or_nan_gradients")
    assert sf.fired and "saturated" in sf.evidence["diagnosis"]
