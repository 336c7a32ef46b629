"""NES: gradient estimate against the analytic gradient, the linear reference, query accounting,
access discipline, shapes, targeted mode, a trained MLP and bad arguments."""
from __future__ import annotations

import pytest
import torch
from _blackbox_cases import Counting, NoBackward, linear_problem, trained_mlp

from fortify.attacks import ATTACKS
from fortify.attacks._blackbox import QueryBudget
from fortify.attacks.base import Oracle
from fortify.attacks.nes import NES
from fortify.errors import ConfigError, ThreatModelError
from fortify.threat import ThreatModel


def test_estimate_matches_analytic_gradient(gen: torch.Generator) -> None:
    lin, x, y, _ = linear_problem("l2", n=16)
    # margin loss of a linear model: gradient w_j* - w_y with j* the runner-up class
    with torch.no_grad():
        z = lin(x)
    runner = z.scatter(1, y[:, None], float("-inf")).argmax(1)
    true = lin.weight[runner] - lin.weight[y]
    atk = NES(samples=400)
    oracle = Oracle(lin, 4)
    budget = QueryBudget(oracle, 16, 10**6, x.device)
    g = atk._estimate(budget, x, torch.arange(16), y, None, 1e-3, (0.0, 1.0), gen)
    cos = torch.nn.functional.cosine_similarity(g, true, dim=1)
    assert float(cos.min()) > 0.8
    assert bool((budget.spent == 800).all()) and oracle.queries == 800 * 16


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_linear_succeeds_above_and_never_below_min_distance(norm: str, gen: torch.Generator) -> None:
    lin, x, y, d = linear_problem(norm)
    model = Counting(lin)
    atk = NES(queries=500, samples=20)
    above = atk(model, x, y, ThreatModel(norm, 1.5 * float(d.max())), generator=gen)
    assert bool(above.success.all())
    assert above.queries == model.rows <= (500 + 2) * len(y)
    assert above.queries < 250 * len(y)  # successful samples stop querying
    model.rows = 0
    threat = ThreatModel(norm, 0.9 * float(d.min()))
    below = atk(model, x, y, threat, generator=gen)
    assert not bool(below.success.any())
    # 12 iterations of 41 queries fit in the budget of 500, plus the base's clean and final queries
    assert below.queries == model.rows == (12 * 41 + 2) * len(y)
    assert bool(threat.contains(below.x_adv, x).all())


def test_no_backward_and_registry(gen: torch.Generator) -> None:
    assert ATTACKS.get("nes") is NES and NES.access == "score"
    lin, x, y, d = linear_problem("l2", n=5)
    res = NES(queries=300, samples=10)(NoBackward(lin), x, y, ThreatModel("l2", 2 * float(d.max())), generator=gen)
    assert bool(res.success.all()) and res.grad_evals == 0


@pytest.mark.parametrize("norm,eps", [("linf", 0.15), ("l2", 1.5)])
@pytest.mark.parametrize("n", [1, 37])
def test_images_any_batch_in_threat_model(norm: str, eps: float, n: int, gen: torch.Generator) -> None:
    model, x, y = trained_mlp()
    x, y = x[:n], y[:n]
    threat = ThreatModel(norm, eps)
    res = NES(queries=200, samples=10)(model, x, y, threat, generator=gen)
    assert res.x_adv.shape == x.shape and res.success.shape == (n,)
    assert bool(threat.contains(res.x_adv, x).all())
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)
    assert res.queries <= (200 + 2) * n


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_targeted_hits_target(norm: str, gen: torch.Generator) -> None:
    lin, x, y, d = linear_problem(norm, n=12)
    target = (y + 1) % 4
    res = NES(queries=1000, samples=20)(
        lin, x, y, ThreatModel(norm, 6 * float(d.max())), targeted=target, generator=gen
    )
    with torch.no_grad():
        pred = lin(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred == target)
    assert float(res.success.float().mean()) >= 0.9


def test_trained_mlp_robust_accuracy_drops(gen: torch.Generator) -> None:
    model, x, y = trained_mlp()
    atk = NES(queries=1000, samples=20)
    # white-box PGD-100 leaves ~0% (l2 1.0) and ~73% / lower (linf 0.1 / 0.12) on this model
    assert float(atk(model, x, y, ThreatModel("l2", 1.0), generator=gen).robust.float().mean()) <= 0.3
    assert float(atk(model, x, y, ThreatModel("linf", 0.12), generator=gen).robust.float().mean()) <= 0.8


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        NES(samples=0)
    with pytest.raises(ConfigError):
        NES(queries=10, samples=10)
    with pytest.raises(ConfigError):
        NES(momentum=1.0)
    with pytest.raises(ConfigError):
        NES(sigma=-1)
    lin, x, y, _ = linear_problem("linf", n=3)
    with pytest.raises(ThreatModelError):
        NES()(lin, x, y, ThreatModel("l1", 1.0))
