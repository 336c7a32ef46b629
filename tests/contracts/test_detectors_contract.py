"""Contract tests over the audit registries (parametrized on ``DETECTORS.names()`` and ``CALIBRATORS.names()`` at
collection, so a new detector or calibrator is covered by registering it).

Every detector, on a conv net with BatchNorm (a user's model in training mode) and a table MLP: ``fit`` then
``score`` gives ``(N,)`` finite floats, batch-invariant (a batch gives the rows of single examples); the model's
fingerprint is unchanged by fit, score and ``score_graph``; ``score_graph`` is differentiable in ``x``; scoring
before fit is a ``NotFittedError``; NaN, wrong shape, wrong dtype and bad labels are ``InputError``. Every
calibrator: fit then apply keeps ``(N, C)`` logits, is refused before fit, leaves the model unchanged.
"""
from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from torch import nn

from fortify.audit.calibrators import CALIBRATORS, calibrate
from fortify.audit.detect import DETECTORS, NotFittedError
from fortify.errors import InputError
from fortify.models import create
from fortify.models.state import fingerprint

TINY: dict[str, Any] = {"k": 3, "bank": 64}


def conv_bn_net() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, 2, 1), nn.ReLU(),
                      nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 3))
    with torch.no_grad():
        m[1].running_mean.uniform_(-0.1, 0.1)
        m[1].running_var.uniform_(0.8, 1.2)
    m.train()
    m[1].eval()
    return m


def cases() -> dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    return {
        "conv-bn": (conv_bn_net(), torch.rand(40, 1, 8, 8, generator=g), torch.arange(40) % 3),
        "table": (create("tabular-mlp", in_shape=(6,), num_classes=3, hidden=(8, 8)).eval(),
                  torch.randn(40, 6, generator=g), torch.arange(40) % 3),
    }


def build(name: str, **extra: Any) -> Any:
    params = inspect.signature(DETECTORS.get(name)).parameters
    return DETECTORS.create(name, **{k: v for k, v in {**TINY, **extra}.items() if k in params})


@pytest.mark.parametrize("kind", ["conv-bn", "table"])
@pytest.mark.parametrize("name", DETECTORS.names())
def test_detector_contract(name: str, kind: str) -> None:
    model, x, y = cases()[kind]
    det = build(name)
    before = fingerprint(model)
    with pytest.raises(NotFittedError):
        det.score(x)
    fitted = det.fit(model, x[:30], y[:30])
    assert fingerprint(model) == before, f"{name}: fit changed the model"
    s = fitted.score(x[30:])
    assert s.shape == (10,) and s.dtype == x.dtype and bool(torch.isfinite(s).all()) and not s.requires_grad
    assert torch.equal(det.score(x[30:]), s)
    rows = torch.cat([fitted.score(x[i:i + 1]) for i in range(30, 40)])
    assert torch.allclose(s, rows, atol=1e-4, rtol=1e-4), "a batch must give the rows of single examples"
    xg = x[30:].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fitted.score_graph(xg).sum(), xg)
    assert g.shape == x[30:].shape and bool(torch.isfinite(g).all())
    assert fingerprint(model) == before, f"{name}: scoring changed the model"


@pytest.mark.parametrize("name", DETECTORS.names())
def test_detector_bad_inputs_are_typed(name: str) -> None:
    model, x, y = cases()["conv-bn"]
    det = build(name)
    before = fingerprint(model)
    for bx, by in ((x[:, :, :4], y), (x.double(), y), (x, y[:-1]), (x, y.float()), (x, y + 5)):
        with pytest.raises(InputError):
            det.fit(model, bx, by)
    fitted = det.fit(model, x, y)
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    for bx in (nan, x[:, :, :4], x.double(), x[0]):
        with pytest.raises(InputError):
            fitted.score(bx)
    assert fingerprint(model) == before


@pytest.mark.parametrize("name", CALIBRATORS.names())
def test_calibrator_contract(name: str) -> None:
    model, x, y = cases()["conv-bn"]
    before = fingerprint(model)
    with pytest.raises(InputError):
        CALIBRATORS.create(name)(torch.zeros(2, 3))
    wrapped = calibrate(model, x[:30], y[:30], name)
    assert fingerprint(model) == before
    with torch.no_grad():
        z = wrapped(x[30:])
    assert z.shape == (10, 3) and bool(torch.isfinite(z).all())
    with pytest.raises(InputError):
        wrapped.calibrator(torch.zeros(2, 5))
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError):
        calibrate(model, nan, y, name)
