"""Decision-based (hard-label) attacks, HopSkipJump and Sign-OPT, against the same references:
near-minimal distance on a linear classifier (analytic minimum), success exactly within eps, query
accounting and hard budget caps, access discipline (labels only, no backward), any batch size in the
threat model, targeted mode and bad arguments. Attack-specific checks live in test_hopskipjump.py
and test_signopt.py."""
from __future__ import annotations

from typing import Any

import pytest
import torch
from _blackbox_cases import Counting, NoBackward, linear_problem, trained_mlp

from fortify.attacks import ATTACKS, Attack
from fortify.attacks.hopskipjump import HopSkipJump
from fortify.attacks.signopt import SignOPT
from fortify.errors import ConfigError, ThreatModelError
from fortify.threat import ThreatModel

#: per attack: the factor over the exact minimal distance allowed after the budget (measured:
#: HopSkipJump 1.03 l2 / 1.07 linf, Sign-OPT 1.01 l2 / 1.14 linf), small-budget kwargs for image
#: batches, the budget for the no-backward check, and constructor arguments that must be refused
CASES: dict[str, dict[str, Any]] = {
    "hopskipjump": {"cls": HopSkipJump, "factor": {"l2": 1.1, "linf": 1.15}, "no_backward_queries": 500,
                    "small": {"queries": 400, "init_evals": 30}, "bad": [{"steps": 0}, {"gamma": 0}]},
    "signopt": {"cls": SignOPT, "factor": {"l2": 1.1, "linf": 1.25}, "no_backward_queries": 800,
                "small": {"queries": 400, "k": 50, "init_directions": 20}, "bad": [{"steps": 0}, {"beta": 0}]},
}


def make(name: str, **kwargs: Any) -> Attack:
    return CASES[name]["cls"](**kwargs)


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_linear_reaches_near_minimal_distance(name: str, norm: str, gen: torch.Generator) -> None:
    lin, x, y, d = linear_problem(norm)
    model = Counting(lin)
    res = make(name, queries=2000)(model, x, y, ThreatModel(norm, 10.0), generator=gen)
    assert bool(res.success.all())
    dist = ThreatModel(norm, 1.0).distance(res.x_adv, x)
    assert bool((dist >= d * (1 - 1e-4)).all())  # nothing beats the exact minimum
    assert float((dist / d).max()) <= CASES[name]["factor"][norm]
    assert res.queries == model.rows <= (2000 + 2) * len(y)


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_success_exactly_within_eps(name: str, norm: str, gen: torch.Generator) -> None:
    lin, x, y, d = linear_problem(norm, n=16)
    atk = make(name, queries=1500)
    low = ThreatModel(norm, 0.9 * float(d.min()))
    res = atk(lin, x, y, low, generator=gen)
    assert not bool(res.success.any())
    assert bool(low.contains(res.x_adv, x).all())
    high = ThreatModel(norm, 1.5 * float(d.max()))
    res = atk(lin, x, y, high, generator=gen)
    assert bool(res.success.all()) and bool(high.contains(res.x_adv, x).all())


@pytest.mark.parametrize("name", sorted(CASES))
def test_stop_at_eps_saves_queries(name: str, gen: torch.Generator) -> None:
    lin, x, y, d = linear_problem("l2", n=16)
    threat = ThreatModel("l2", 1.5 * float(d.max()))
    full = make(name, queries=1500)(lin, x, y, threat, generator=gen)
    early = make(name, queries=1500, stop_at_eps=True)(lin, x, y, threat, generator=gen)
    assert bool(early.success.all())
    assert early.queries < full.queries / 2


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_backward_and_registry(name: str, gen: torch.Generator) -> None:
    cls = CASES[name]["cls"]
    assert ATTACKS.get(name) is cls and cls.access == "decision" and cls.minimum_norm
    lin, x, y, d = linear_problem("l2", n=5)
    res = make(name, queries=CASES[name]["no_backward_queries"])(NoBackward(lin), x, y, ThreatModel("l2", 2 * float(d.max())), generator=gen)
    assert bool(res.success.all()) and res.grad_evals == 0


@pytest.mark.parametrize("norm,eps", [("linf", 0.15), ("l2", 1.5)])
@pytest.mark.parametrize("n", [1, 37])
@pytest.mark.parametrize("name", sorted(CASES))
def test_images_any_batch_in_threat_model(name: str, norm: str, eps: float, n: int, gen: torch.Generator) -> None:
    model, x, y = trained_mlp()
    x, y = x[:n], y[:n]
    threat = ThreatModel(norm, eps)
    res = make(name, **CASES[name]["small"])(model, x, y, threat, generator=gen)
    assert res.x_adv.shape == x.shape and res.success.shape == (n,)
    assert bool(threat.contains(res.x_adv, x).all())
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)
    assert res.queries <= (400 + 2) * n


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_targeted_hits_target(name: str, norm: str, gen: torch.Generator) -> None:
    lin, x, y, d = linear_problem(norm, n=12)
    target = (y + 1) % 4
    res = make(name, queries=1000)(lin, x, y, ThreatModel(norm, 10.0), targeted=target, generator=gen)
    with torch.no_grad():
        pred = lin(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred == target)
    # a start exists for sure when a batch peer has the target class (else uniform noise must hit it)
    has_peer = (y[None, :] == target[:, None]).any(dim=1)
    assert bool(res.success[has_peer].all()) and float(res.success.float().mean()) >= 0.75
    # the targeted distance can only be larger than the untargeted minimum
    dist = ThreatModel(norm, 1.0).distance(res.x_adv, x)
    assert bool((dist[res.success] >= d[res.success] * (1 - 1e-4)).all())


@pytest.mark.parametrize("budget", [1, 60, 250])
@pytest.mark.parametrize("name", sorted(CASES))
def test_budget_is_a_hard_cap(name: str, budget: int, gen: torch.Generator) -> None:
    lin, x, y, d = linear_problem("l2", n=7)
    model = Counting(lin)
    threat = ThreatModel("l2", 10.0)
    res = make(name, queries=budget)(model, x, y, threat, targeted=(y + 1) % 4, generator=gen)
    assert res.queries == model.rows <= (budget + 2) * len(y)
    assert bool(threat.contains(res.x_adv, x).all())
    with torch.no_grad():
        assert torch.equal(res.success, lin(res.x_adv).argmax(1) == (y + 1) % 4)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_arguments(name: str) -> None:
    for bad in CASES[name]["bad"]:
        with pytest.raises(ConfigError):
            make(name, **bad)
    lin, x, y, _ = linear_problem("linf", n=3)
    with pytest.raises(ThreatModelError):
        make(name)(lin, x, y, ThreatModel("l1", 1.0))
