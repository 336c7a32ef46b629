"""HopSkipJump: near-minimal distance on a linear classifier (analytic reference), success exactly
within eps, query accounting, access discipline, shapes, targeted mode and bad arguments."""
from __future__ import annotations

import pytest
import torch
from _blackbox_cases import Counting, NoBackward, linear_problem, trained_mlp

from fortify.attacks import ATTACKS
from fortify.attacks.hopskipjump import HopSkipJump
from fortify.errors import ConfigError, ThreatModelError
from fortify.threat import ThreatModel

# factor over the exact minimal distance reached after the budget (measured: 1.03 l2, 1.07 linf)
FACTOR = {"l2": 1.1, "linf": 1.15}


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_linear_reaches_near_minimal_distance(norm: str, gen: torch.Generator) -> None:
    lin, x, y, d = linear_problem(norm)
    model = Counting(lin)
    res = HopSkipJump(n_queries=2000)(model, x, y, ThreatModel(norm, 10.0), generator=gen)
    assert bool(res.success.all())
    dist = ThreatModel(norm, 1.0).distance(res.x_adv, x)
    assert bool((dist >= d * (1 - 1e-4)).all())  # nothing beats the exact minimum
    assert float((dist / d).max()) <= FACTOR[norm]
    assert res.queries == model.rows <= (2000 + 2) * len(y)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_success_exactly_within_eps(norm: str, gen: torch.Generator) -> None:
    lin, x, y, d = linear_problem(norm, n=16)
    atk = HopSkipJump(n_queries=1500)
    low = ThreatModel(norm, 0.9 * float(d.min()))
    res = atk(lin, x, y, low, generator=gen)
    assert not bool(res.success.any())
    assert bool(low.contains(res.x_adv, x).all())
    high = ThreatModel(norm, 1.5 * float(d.max()))
    res = atk(lin, x, y, high, generator=gen)
    assert bool(res.success.all()) and bool(high.contains(res.x_adv, x).all())


def test_stop_at_eps_saves_queries(gen: torch.Generator) -> None:
    lin, x, y, d = linear_problem("l2", n=16)
    threat = ThreatModel("l2", 1.5 * float(d.max()))
    full = HopSkipJump(n_queries=1500)(lin, x, y, threat, generator=gen)
    early = HopSkipJump(n_queries=1500, stop_at_eps=True)(lin, x, y, threat, generator=gen)
    assert bool(early.success.all())
    assert early.queries < full.queries / 2


def test_no_backward_and_registry(gen: torch.Generator) -> None:
    assert ATTACKS.get("hopskipjump") is HopSkipJump and HopSkipJump.access == "decision"
    assert HopSkipJump.minimum_norm
    lin, x, y, d = linear_problem("l2", n=5)
    res = HopSkipJump(n_queries=500)(NoBackward(lin), x, y, ThreatModel("l2", 2 * float(d.max())), generator=gen)
    assert bool(res.success.all()) and res.grad_evals == 0


@pytest.mark.parametrize("norm,eps", [("linf", 0.15), ("l2", 1.5)])
@pytest.mark.parametrize("n", [1, 37])
def test_images_any_batch_in_threat_model(norm: str, eps: float, n: int, gen: torch.Generator) -> None:
    model, x, y = trained_mlp()
    x, y = x[:n], y[:n]
    threat = ThreatModel(norm, eps)
    res = HopSkipJump(n_queries=400, init_evals=30)(model, x, y, threat, generator=gen)
    assert res.x_adv.shape == x.shape and res.success.shape == (n,)
    assert bool(threat.contains(res.x_adv, x).all())
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)
    assert res.queries <= (400 + 2) * n


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_targeted_hits_target(norm: str, gen: torch.Generator) -> None:
    lin, x, y, d = linear_problem(norm, n=12)
    target = (y + 1) % 4
    res = HopSkipJump(n_queries=1000)(lin, x, y, ThreatModel(norm, 10.0), targeted=target, generator=gen)
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
def test_budget_is_a_hard_cap(budget: int, gen: torch.Generator) -> None:
    lin, x, y, d = linear_problem("l2", n=7)
    model = Counting(lin)
    threat = ThreatModel("l2", 10.0)
    res = HopSkipJump(n_queries=budget)(model, x, y, threat, targeted=(y + 1) % 4, generator=gen)
    assert res.queries == model.rows <= (budget + 2) * len(y)
    assert bool(threat.contains(res.x_adv, x).all())
    with torch.no_grad():
        assert torch.equal(res.success, lin(res.x_adv).argmax(1) == (y + 1) % 4)


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        HopSkipJump(steps=0)
    with pytest.raises(ConfigError):
        HopSkipJump(gamma=0)
    lin, x, y, _ = linear_problem("linf", n=3)
    with pytest.raises(ThreatModelError):
        HopSkipJump()(lin, x, y, ThreatModel("l1", 1.0))


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_unreachable_target_does_not_crash(norm: str, gen: torch.Generator) -> None:
    """Regression: targeted mode with a target no input can reach (no peer, no noise draw is
    classified as it) used to crash in ``lp_norm`` on an empty batch; now every point fails
    cleanly, stays at ``x`` and the query budget still holds."""
    lin, x, y, _ = linear_problem(norm, n=6)
    with torch.no_grad():
        lin.bias[3] = -1e4  # class 3 is never predicted anywhere in the box
    target = torch.full_like(y, 3)
    model = Counting(lin)
    res = HopSkipJump(n_queries=300, init_tries=5)(model, x, y, ThreatModel(norm, 0.3), targeted=target, generator=gen)
    assert res.x_adv.shape == x.shape and not bool(res.success.any())
    assert torch.equal(res.x_adv, x)
    assert res.queries == model.rows <= (300 + 2) * len(y)
