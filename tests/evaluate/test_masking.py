"""Gradient-masked models: the sanity flags fire AND the cascade still reaches the true robust accuracy.

The "true level" is measured independently: a strong attack on the unmasked equivalent model (the
saturated / probability models have the same argmax as the plain MLP), an explicit BPDA attack for
the quantized model, and a strong EoT attack for the randomized model.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fortify.attacks import ATTACKS
from fortify.evaluate import BPDA, EoT, LogitRescale, find_nondifferentiable, robust_accuracy
from fortify.threat import ThreatModel

from _eval_cases import NoisyInput, Quantize, Scaled, trained_mlp

pytestmark = pytest.mark.skipif("apgd" not in ATTACKS or "apgd-t" not in ATTACKS,
                                reason="the fast preset needs apgd and apgd-t, not landed yet")
THR = ThreatModel("linf", 0.1)
FAST = dict(preset="fast", budget=0.3)
TOL = 3 / 96


class Shatter(nn.Module):
    """Shattered gradients (Athalye et al. 2018): a tiny high-frequency input wiggle whose derivative
    oscillates in sign, so gradients are non-zero but useless."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 0.02 * torch.sin(500.0 * x)).clamp(0, 1)


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    m, x, y = trained_mlp()
    ref = robust_accuracy(m, x, y, THR, preset="standard", budget=0.5, sanity=False).robust_accuracy
    return m, x, y, ref


def test_plain_model_raises_no_flag(base) -> None:
    m, x, y, ref = base
    rep = robust_accuracy(m, x, y, THR, **FAST)
    assert rep.fired == [] and rep.wrappers == []
    assert rep.robust_accuracy <= ref + TOL


def test_quantized_input_bpda(base) -> None:
    m, x, y, _ = base
    qm = nn.Sequential(Quantize(16), m)
    assert find_nondifferentiable(qm, x) == [qm[0]]
    plain = robust_accuracy(qm, x, y, THR, sanity=False, **FAST)
    rep = robust_accuracy(qm, x, y, THR, **FAST)
    assert "zero_or_nan_gradients" in rep.fired
    assert any(w.startswith("bpda") for w in rep.wrappers)
    # independent reference: a long APGD through an explicit straight-through wrapper
    res = ATTACKS.get("apgd")(steps=100)(BPDA(qm, [qm[0]]), x, y, THR, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        true = float((qm(res.x_adv).argmax(1) == y).float().mean())
    assert plain.robust_accuracy > 0.5  # masking is real: plain gradients fail
    assert rep.robust_accuracy <= true + TOL


@pytest.mark.parametrize("kind", ["softmax*1e4", "temperature*1e4", "softmax(50z)"])
def test_saturated_outputs(base, kind: str) -> None:
    m, x, y, ref = base
    model = {"softmax*1e4": Scaled(m, 1.0, True, 1e4), "temperature*1e4": Scaled(m, 1e4, False),
             "softmax(50z)": Scaled(m, 50.0, True)}[kind]
    with torch.no_grad():
        assert torch.equal(model(x).argmax(1), m(x).argmax(1))  # same classifier: same true robustness
    plain = robust_accuracy(model, x, y, THR, sanity=False, **FAST)
    rep = robust_accuracy(model, x, y, THR, **FAST)
    assert "zero_or_nan_gradients" in rep.fired or "probability_outputs" in rep.fired
    if kind.startswith("softmax"):
        assert "probability_outputs" in rep.fired
    assert plain.robust_accuracy > rep.robust_accuracy + 0.05  # masking is real
    assert rep.robust_accuracy <= ref + TOL


def test_randomized_model_eot(base) -> None:
    m, x, y, _ = base
    rm = NoisyInput(m, 0.3)

    def mean_pred(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.stack([torch.softmax(rm(z), 1) for _ in range(256)]).mean(0).argmax(1)

    # EoT makes the same attack much stronger against the expected prediction
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    torch.manual_seed(0)
    raw = ATTACKS.get("apgd")(steps=20)(rm, x, y, THR, generator=gen())
    eot = ATTACKS.get("apgd")(steps=20)(EoT(rm, 16), x, y, THR, generator=gen())
    acc_raw = float((mean_pred(raw.x_adv) == y).float().mean())
    acc_eot = float((mean_pred(eot.x_adv) == y).float().mean())
    assert acc_eot < acc_raw - 0.15
    strong = ATTACKS.get("apgd")(steps=100)(EoT(rm, 64), x, y, THR, generator=gen())
    true = float((mean_pred(strong.x_adv) == y).float().mean())
    rep = robust_accuracy(rm, x, y, THR, **FAST)
    assert "randomized_outputs" in rep.fired
    assert any(w.startswith("eot") for w in rep.wrappers)
    assert rep.robust_accuracy <= true + TOL


def test_shattered_gradients_caught_by_blackbox_and_transfer(base) -> None:
    m, x, y, ref = base
    sm = nn.Sequential(Shatter(), m)
    plain = robust_accuracy(sm, x, y, THR, sanity=False, **FAST)
    rep = robust_accuracy(sm, x, y, THR, **FAST)
    assert plain.robust_accuracy > 0.4
    assert {"transfer_beats_whitebox", "blackbox_beats_whitebox"} & set(rep.fired)
    assert rep.robust_accuracy <= ref + 0.05  # the wiggle moves inputs by <= 0.02: ~ the plain model


def test_wrappers_preserve_forward_and_argmax(base) -> None:
    m, x, y, _ = base
    qm = nn.Sequential(Quantize(8), m)
    b = BPDA(qm, [qm[0]])
    xg = x[:5].clone().requires_grad_(True)
    out = b(xg)
    with torch.no_grad():
        assert torch.equal(out, qm(x[:5]))
    (g,) = torch.autograd.grad(out[:, 0].sum(), xg)
    xq = qm[0](x[:5]).requires_grad_(True)
    (g_ref,) = torch.autograd.grad(m(xq)[:, 0].sum(), xq)  # straight-through: gradient at the quantized input
    assert torch.allclose(g, g_ref)
    assert not list(qm[0]._forward_hooks)  # hooks removed, model untouched
    p = Scaled(m, 3.0, True)
    with torch.no_grad():
        assert torch.equal(LogitRescale(p, "log")(x).argmax(1), p(x).argmax(1))
        assert torch.equal(LogitRescale(m, "scale", 1e3)(x).argmax(1), m(x).argmax(1))
        e = EoT(m, 4)(x)  # deterministic model: EoT is log-softmax
        assert torch.allclose(e, torch.log_softmax(m(x), 1), atol=1e-5)
