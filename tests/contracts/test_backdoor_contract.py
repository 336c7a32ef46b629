"""Contract tests over the backdoor registries (parametrized on ``POISONS.names()``,
``BACKDOOR_DETECTORS.names()`` and ``BACKDOOR_MITIGATIONS.names()`` at collection, so a new method is
covered by registering it).

Every poison: exact count, labels and untouched remainder on a random set, ``apply`` keeps the shape and
[0, 1], a rate outside [0, 1] is a ConfigError. Every detector, on a tiny conv net handed over in training
mode: a :class:`BackdoorDetection` of its declared level with finite numbers, the model's fingerprint
unchanged and no forward hook left behind, bad inputs typed. Every mitigation: a new model, the input's
fingerprint unchanged.
"""
from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from fortify.audit.backdoor import BACKDOOR_DETECTORS, BACKDOOR_MITIGATIONS, POISONS, BackdoorDetection
from fortify.errors import ConfigError, InputError
from fortify.models.state import fingerprint

#: tiny budgets passed to each constructor that has the keyword
TINY: dict[str, Any] = {"steps": 4, "inversion_steps": 2, "per_class": 2, "overlays": 3, "epochs": 1,
                        "surrogate_epochs": 1}


def _tiny(cls: Any) -> dict[str, Any]:
    import inspect

    params = inspect.signature(cls).parameters
    return {k: v for k, v in TINY.items() if k in params}


def net() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 6, 3, 2, 1), nn.ReLU(), nn.Flatten(),
                      nn.Linear(6 * 3 * 3, 8), nn.ReLU(), nn.Linear(8, 4))
    m.train()
    return m


def data(n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 10, 10, generator=g), torch.arange(n) % 4


@pytest.mark.parametrize("name", POISONS.names())
def test_poison_contract(name: str) -> None:
    x, y = data()
    p = POISONS.create(name, rate=0.125, target=1, **_tiny(POISONS.get(name)))
    res = p(x, y)
    assert res.indices.numel() == 6 and res.x.shape == x.shape and res.y.dtype == torch.long
    assert bool((res.y[res.indices] == 1).all())
    rest = torch.ones(48, dtype=torch.bool)
    rest[res.indices] = False
    rest[res.noise_indices] = False
    assert torch.equal(res.x[rest], x[rest]) and torch.equal(res.y[rest], y[rest])
    out = p.apply(x[:5])
    assert out.shape == (5, 1, 10, 10) and float(out.min()) >= 0 and float(out.max()) <= 1
    with pytest.raises(ConfigError):
        POISONS.create(name, rate=2.0)
    with pytest.raises(InputError):
        p.apply(torch.rand(5, 100))


def _hooks(m: nn.Module) -> int:
    return sum(len(s._forward_hooks) + len(s._forward_pre_hooks) + len(s._backward_hooks) for s in m.modules())


@pytest.mark.parametrize("name", BACKDOOR_DETECTORS.names())
def test_detector_contract(name: str) -> None:
    cls = BACKDOOR_DETECTORS.get(name)
    det = BACKDOOR_DETECTORS.create(name, **_tiny(cls))
    m = net()
    x, y = data()
    before = fingerprint(m)
    res = det(m, x, y)
    assert fingerprint(m) == before and _hooks(m) == 0
    assert isinstance(res, BackdoorDetection) and res.level == cls.level and res.detector == name
    assert isinstance(res.flagged, bool) and res.seconds >= 0
    assert res.target is None or 0 <= res.target < 4
    if res.level == "model":
        assert torch.isfinite(torch.tensor(res.score))
    else:
        assert res.sample_scores is not None and res.sample_scores.shape == (48,)
    if res.scorer is not None:
        assert res.scorer(x[:3]).shape == (3,) and fingerprint(m) == before
    with pytest.raises(InputError):
        det(m, torch.full_like(x, float("nan")), y)
    with pytest.raises(InputError):
        det(m, x, torch.full((48,), 9))


@pytest.mark.parametrize("name", BACKDOOR_MITIGATIONS.names())
def test_mitigation_contract(name: str) -> None:
    m = net()
    x, y = data()
    before = fingerprint(m)
    poison = POISONS.create("badnets", size=2)
    res = BACKDOOR_MITIGATIONS.create(name, **_tiny(BACKDOOR_MITIGATIONS.get(name)))(m, x, y, poison=poison,
                                                                                   x_test=x, y_test=y)
    assert fingerprint(m) == before and _hooks(m) == 0
    assert res.model is not m and res.before is not None and res.after is not None
    assert res.model(x[:2]).shape == (2, 4)
    with pytest.raises(InputError):
        BACKDOOR_MITIGATIONS.create(name)(m, x, y, poison=poison)
