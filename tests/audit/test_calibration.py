"""Calibration metrics against torchmetrics' CalibrationError (an independent implementation) and analytic
answers; calibrators against a toy whose true temperature is known; the wrapper never changes the model."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fortify.audit import calibration as cal
from fortify.audit.calibrators import CALIBRATORS, calibrate, pool_adjacent_violators
from fortify.errors import InputError, UnknownNameError
from fortify.models.state import fingerprint


def toy(n: int = 600, c: int = 4, d: int = 6, temp: float = 3.0, seed: int = 0) -> tuple[nn.Module, torch.Tensor,
                                                                                          torch.Tensor]:
    """A linear model whose logits are ``temp`` times the true ones (overconfident); labels drawn from the truth."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(c, d, generator=g)
    x = torch.randn(n, d, generator=g)
    y = torch.multinomial((x @ w.T).softmax(1), 1, generator=g).squeeze(1)
    model = nn.Linear(d, c, bias=False)
    with torch.no_grad():
        model.weight.copy_(temp * w)
    return model, x, y


def random_probs(n: int = 300, c: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p = (2.5 * torch.randn(n, c, generator=g)).softmax(1)
    return p, torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
@pytest.mark.parametrize("n_bins", [5, 15])
def test_top_label_matches_torchmetrics(norm: str, n_bins: int) -> None:
    tm = pytest.importorskip("torchmetrics.functional.classification")
    p, y = random_probs()
    p[:3] = torch.nn.functional.one_hot(y[:3], 5).float()  # confidence exactly 1: the degenerate last bin
    ref = float(tm.multiclass_calibration_error(p, y, num_classes=5, n_bins=n_bins, norm=norm))
    assert cal.top_label_ece(p, y, n_bins, norm=norm) == pytest.approx(ref, abs=1e-6)


def test_analytic_values() -> None:
    # two samples, confidence 0.9 (right) and 0.6 (wrong), 10 bins: ECE = (0.1 + 0.6) / 2, MCE = 0.6
    p = torch.tensor([[0.9, 0.1], [0.6, 0.4]])
    y = torch.tensor([0, 1])
    assert cal.top_label_ece(p, y, 10) == pytest.approx(0.35)
    assert cal.max_calibration_error(p, y, 10) == pytest.approx(0.6)
    assert cal.brier_score(p, y) == pytest.approx(((0.1 ** 2) * 2 + (0.6 ** 2) * 2) / 2)
    assert cal.nll(p, y) == pytest.approx(-(math.log(0.9) + math.log(0.4)) / 2)
    # one bin of equal mass: |mean acc - mean conf| = |0.5 - 0.75|
    assert cal.adaptive_ece(p, y, 1) == pytest.approx(0.25)
    # classwise, 1 bin: class 0 mean p 0.75 vs freq 0.5; class 1 mean p 0.25 vs freq 0.5
    assert cal.classwise_ece(p, y, 1) == pytest.approx(0.25)


@pytest.mark.filterwarnings("ignore:torch.searchsorted")  # torchmetrics' own bucketize of a strided view
def test_classwise_matches_binary_torchmetrics() -> None:
    tm = pytest.importorskip("torchmetrics.functional.classification")
    p, y = random_probs()
    ref = sum(float(tm.binary_calibration_error(p[:, k], (y == k).long(), n_bins=10)) for k in range(5)) / 5
    assert cal.classwise_ece(p, y, 10) == pytest.approx(ref, abs=1e-6)


def test_perfectly_calibrated_sample_has_small_ece() -> None:
    g = torch.Generator().manual_seed(3)
    p = torch.rand(20000, 1, generator=g) * 0.5 + 0.5
    probs = torch.cat([p, 1 - p], 1)
    y = (torch.rand(20000, generator=g) > p.squeeze(1)).long()  # P(y = 0) = p exactly
    assert cal.top_label_ece(probs, y) < 0.02
    assert cal.adaptive_ece(probs, y) < 0.02


def test_bad_inputs_are_typed() -> None:
    p, y = random_probs()
    bad = p.clone()
    bad[0, 0] = float("nan")
    for args in ((bad, y), (p * 2, y), (p, y[:-1]), (p[:, :1], y[:1] * 0), (p, y.float()), (torch.log(p), y)):
        with pytest.raises(InputError):
            cal.calibration_report(*args)


def test_pav_is_the_least_squares_monotone_fit() -> None:
    v = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0, 5.0])
    fit = pool_adjacent_violators(v)
    assert torch.all(fit[1:] >= fit[:-1])
    assert fit.tolist() == pytest.approx([1.0, 1.75, 1.75, 1.75, 1.75, 5.0])


@pytest.mark.parametrize("method", CALIBRATORS.names())
def test_calibrators_improve_an_overconfident_toy(method: str) -> None:
    model, x, y = toy()
    before = fingerprint(model)
    wrapped = calibrate(model, x[:400], y[:400], method)
    assert fingerprint(model) == before, "fitting a calibrator must not change the model"
    with torch.no_grad():
        raw, new = model(x[400:]).softmax(1), wrapped(x[400:]).softmax(1)
    assert torch.allclose(new.sum(1), torch.ones(200), atol=1e-5)
    r0, r1 = cal.calibration_report(raw, y[400:], 10), cal.calibration_report(new, y[400:], 10)
    assert r1.nll < r0.nll, f"{method}: NLL {r0.nll:.3f} -> {r1.nll:.3f}"
    assert r1.ece < r0.ece
    assert fingerprint(model) == before


def test_temperature_recovers_the_true_temperature() -> None:
    model, x, y = toy(n=3000)
    wrapped = calibrate(model, x, y, "temperature")
    assert wrapped.calibrator.temperature == pytest.approx(3.0, rel=0.15)  # type: ignore[union-attr]
    with torch.no_grad():
        assert torch.equal(model(x).argmax(1), wrapped(x).argmax(1)), "temperature keeps the argmax"


def test_calibrator_errors() -> None:
    model, x, y = toy(n=50)
    with pytest.raises(UnknownNameError):
        calibrate(model, x, y, "platt-magic")
    with pytest.raises(InputError):
        CALIBRATORS.create("temperature")(torch.zeros(3, 4))  # used before fit
    with pytest.raises(InputError):
        calibrate(model, x[:, :3], y)


def test_reliability_diagram_writes_png(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p, y = random_probs()
    out = cal.reliability_diagram(p, y, tmp_path / "rel.png", n_bins=10, others={"sharper": (p * 2).softmax(1)})
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ece_bootstrap_interval_contains_the_ece_and_narrows_with_n() -> None:
    from fortify.audit.calibration import calibration_report

    g = torch.Generator().manual_seed(0)
    widths = []
    for n in (100, 1600):
        probs = torch.softmax(3 * torch.randn(n, 4, generator=g), dim=1)
        labels = torch.multinomial(probs, 1, generator=g).squeeze(1)  # calibrated in expectation
        r = calibration_report(probs, labels)
        assert r.ece_interval is not None and r.ece_interval[0] <= r.ece <= r.ece_interval[1] + 1e-12
        widths.append(r.ece_interval[1] - r.ece_interval[0])
    assert widths[1] < widths[0] / 2  # ~1/sqrt(n)
