"""Contract tests over both explain registries (parametrized on ``ATTRIBUTIONS.names()`` and
``ATTRIBUTION_METRICS.names()`` at collection, so a new method is covered by registering it).

Every attribution method, on a conv net (with BatchNorm), a residual net and a table MLP (Grad-CAM:
conv nets only, a typed refusal on the MLP): the result is shaped like ``x``, finite; a batch gives
the same rows as single examples (stochastic methods: the same result for any ``batch_size`` and
for the same seed); the model's fingerprint is unchanged; bad inputs (NaN, wrong target shape,
out-of-range target, wrong dtype) are typed ``InputError``. Every metric: ``values (N,)`` finite,
its declared direction, batch invariance (deterministic metrics) or seed reproducibility, the model
unchanged, attributions of the wrong shape refused.
"""
from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from fortify.errors import InputError, UnsupportedLayerError
from fortify.explain import ATTRIBUTION_METRICS, ATTRIBUTIONS
from fortify.models import create
from fortify.models.state import fingerprint

#: small budgets passed to each constructor that has the keyword
TINY: dict[str, Any] = {"steps": 6, "samples": 3}
NEEDS_CONV = {"gradcam"}
#: metrics that remove / impute pixels: images (N, C, H, W) only, a typed refusal on tables
NEEDS_IMAGES = {"road-morf", "road-lerf", "roar"}


def conv_bn_net() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(),
                      nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 4))
    with torch.no_grad():
        m[1].running_mean.uniform_(-0.1, 0.1)
        m[1].running_var.uniform_(0.8, 1.2)
    m.train()  # a user's model as handed over: training flags must come back as they were
    m[1].eval()
    return m


def models_and_inputs() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(1)
    g = torch.Generator().manual_seed(2)
    return {
        "conv-bn": (conv_bn_net(), torch.rand(5, 1, 8, 8, generator=g)),
        "resnet": (create("resnet-mnist", in_shape=(1, 8, 8), num_classes=4, widths=(4, 4, 6)).eval(),
                   torch.rand(5, 1, 8, 8, generator=g)),
        "table": (create("tabular-mlp", in_shape=(6,), num_classes=3, hidden=(8, 8)).eval(),
                  torch.randn(5, 6, generator=g)),
    }


def build(registry: Any, name: str, **extra: Any) -> Any:
    import inspect

    params = inspect.signature(registry.get(name)).parameters
    return registry.create(name, **{k: v for k, v in {**TINY, **extra}.items() if k in params})


CASES = [(n, k) for n in ATTRIBUTIONS.names() for k in ("conv-bn", "resnet", "table")]


@pytest.mark.parametrize("name,kind", CASES)
def test_attribution_contract(name: str, kind: str) -> None:
    model, x = models_and_inputs()[kind]
    method = build(ATTRIBUTIONS, name)
    before = fingerprint(model)
    if name in NEEDS_CONV and kind == "table":
        with pytest.raises(UnsupportedLayerError):
            method(model, x)
        assert fingerprint(model) == before
        return
    attr = method(model, x)
    assert attr.shape == x.shape and attr.dtype == x.dtype and bool(torch.isfinite(attr).all())
    assert not attr.requires_grad
    if method.stochastic:
        again = build(ATTRIBUTIONS, name, batch_size=2)(model, x)
        assert torch.allclose(attr, again, atol=1e-6), "same seed, other batch_size: same result"
    else:
        rows = torch.cat([method(model, x[i:i + 1]) for i in range(x.shape[0])])
        assert torch.allclose(attr, rows, atol=1e-5, rtol=1e-4), "a batch must give the rows of single examples"
    assert fingerprint(model) == before, f"{name} changed the model"


@pytest.mark.parametrize("name", ATTRIBUTIONS.names())
def test_attribution_bad_inputs_are_typed(name: str) -> None:
    model, x = models_and_inputs()["conv-bn"]
    method = build(ATTRIBUTIONS, name)
    before = fingerprint(model)
    nan = x.clone()
    nan[1, 0, 2, 2] = float("nan")
    for bad_x, target in ((nan, None), (x, torch.tensor([0, 1])), (x, torch.tensor([0, 1, 2, 3, 4])),
                          (x, torch.tensor([[0, 1, 2, 3, 0]])), (x.double(), None), (x[:, :, :4], None)):
        with pytest.raises(InputError):
            method(model, bad_x, target)
    assert fingerprint(model) == before


def metric_extra(name: str, x: torch.Tensor) -> dict[str, Any]:
    """Constructor options a metric needs beyond TINY: ROAR's training data (random images labelled by
    the model's classes) and a one-epoch retraining on two fractions."""
    if name != "roar":
        return {}
    g = torch.Generator().manual_seed(3)
    xt = torch.rand((16,) + tuple(x.shape[1:]), generator=g, dtype=x.dtype)
    return {"train": (xt, torch.randint(0, 3, (16,), generator=g)), "fractions": (0.25, 0.5),  # every model has >= 3 classes
            "retrain": {"epochs": 1, "batch": 8}}


METRIC_CASES = [(n, k) for n in ATTRIBUTION_METRICS.names() for k in ("conv-bn", "table")]


@pytest.mark.parametrize("name,kind", METRIC_CASES)
def test_metric_contract(name: str, kind: str) -> None:
    model, x = models_and_inputs()[kind]
    attr = ATTRIBUTIONS.create("saliency")(model, x)
    extra = metric_extra(name, x)
    metric = build(ATTRIBUTION_METRICS, name, **extra)
    before = fingerprint(model)
    if name in NEEDS_IMAGES and x.dim() != 4:
        with pytest.raises(InputError):
            metric(model, x, attr)
        assert fingerprint(model) == before
        return
    res = metric(model, x, attr)
    assert res.values.shape == (x.shape[0],) and bool(torch.isfinite(res.values).all())
    assert res.higher_is_better is type(metric).higher_is_better and res.name == name
    if metric.stochastic:
        again = build(ATTRIBUTION_METRICS, name, batch_size=2, **extra)(model, x, attr)
        assert torch.allclose(res.values, again.values, atol=1e-6)
    else:
        rows = torch.cat([metric(model, x[i:i + 1], attr[i:i + 1]).values for i in range(x.shape[0])])
        assert torch.allclose(res.values, rows, atol=1e-5, rtol=1e-4)
    with pytest.raises(InputError):
        metric(model, x, attr[:, :-1] if attr.dim() == 2 else attr[:, :, :4])
    with pytest.raises(InputError):
        metric(model, x, attr, torch.tensor([0]))
    assert fingerprint(model) == before, f"{name} changed the model"


def test_every_metric_declares_its_direction_and_cost() -> None:
    import sys

    for name, cls in ATTRIBUTION_METRICS.items():
        doc = " ".join((sys.modules[cls.__module__].__doc__ or "").lower().split())
        direction = "higher is better" if cls.higher_is_better else "lower is better"
        assert direction in doc, f"{name}: the module docstring must say '{direction}'"
        assert "cost" in doc, f"{name}: the module docstring must state the cost"
