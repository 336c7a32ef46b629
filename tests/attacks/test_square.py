"""Square attack: analytic linear reference, query accounting, access discipline, shapes, targeted
mode, a trained MLP, the p-schedule and bad arguments."""
from __future__ import annotations

import pytest
import torch
from _blackbox_cases import Counting, NoBackward, linear_problem, trained_mlp

from fortify.attacks import ATTACKS
from fortify.attacks.square import Square, p_selection
from fortify.errors import ConfigError, ThreatModelError
from fortify.threat import ThreatModel


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_linear_succeeds_above_and_never_below_min_distance(norm: str, gen: torch.Generator) -> None:
    lin, x, y, d = linear_problem(norm)
    model = Counting(lin)
    atk = Square(queries=400)
    above = atk(model, x, y, ThreatModel(norm, 1.5 * float(d.max())), generator=gen)
    assert bool(above.success.all())
    assert above.queries == model.rows
    assert above.queries < 100 * len(y)  # an easy problem: far fewer than the budget
    model.rows = 0
    below = atk(model, x, y, ThreatModel(norm, 0.9 * float(d.min())), generator=gen)
    assert not bool(below.success.any())
    # budget per sample inside the search + the base's clean and final queries
    assert below.queries == model.rows == (400 + 2) * len(y)
    assert bool(ThreatModel(norm, 0.9 * float(d.min())).contains(below.x_adv, x).all())


def test_no_backward_and_registry() -> None:
    assert ATTACKS.get("square") is Square and Square.access == "score"
    lin, x, y, d = linear_problem("linf", n=5)
    res = Square(queries=100)(NoBackward(lin), x, y, ThreatModel("linf", 2 * float(d.max())))
    assert bool(res.success.all()) and res.grad_evals == 0


@pytest.mark.parametrize("norm,eps", [("linf", 0.15), ("l2", 1.5)])
@pytest.mark.parametrize("n", [1, 37])
def test_images_any_batch_in_threat_model(norm: str, eps: float, n: int, gen: torch.Generator) -> None:
    model, x, y = trained_mlp()
    x, y = x[:n], y[:n]
    threat = ThreatModel(norm, eps)
    res = Square(queries=150)(model, x, y, threat, generator=gen)
    assert res.x_adv.shape == x.shape and res.success.shape == (n,)
    assert bool(threat.contains(res.x_adv, x).all())
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)
    assert res.queries <= (150 + 2) * n


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_targeted_hits_target(norm: str, gen: torch.Generator) -> None:
    lin, x, y, d = linear_problem(norm, n=12)
    target = (y + 1) % 4
    res = Square(queries=1000)(lin, x, y, ThreatModel(norm, 6 * float(d.max())), targeted=target, generator=gen)
    with torch.no_grad():
        pred = lin(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred == target)
    assert float(res.success.float().mean()) >= 0.9


def test_trained_mlp_robust_accuracy_drops(gen: torch.Generator) -> None:
    model, x, y = trained_mlp()
    res = Square(queries=300)(model, x, y, ThreatModel("linf", 0.1), generator=gen)
    # a plain white-box PGD-100 leaves ~73% here; random search with 300 queries gets close
    assert float(res.robust.float().mean()) <= 0.85
    res2 = Square(queries=300)(model, x, y, ThreatModel("l2", 1.0), generator=gen)
    assert float(res2.robust.float().mean()) <= 0.95


def test_deterministic_given_generator() -> None:
    model, x, y = trained_mlp()
    a = Square(queries=50)(model, x, y, ThreatModel("l2", 1.0), generator=torch.Generator().manual_seed(3))
    b = Square(queries=50)(model, x, y, ThreatModel("l2", 1.0), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.x_adv, b.x_adv) and a.queries == b.queries


def test_p_schedule_matches_paper() -> None:
    halvings = [(0, 0), (10, 0), (11, 1), (50, 1), (51, 2), (201, 3), (501, 4), (1001, 5), (2001, 6),
                (4001, 7), (6001, 8), (8001, 9), (9999, 9)]
    for it, k in halvings:
        assert p_selection(0.8, it, 10000) == pytest.approx(0.8 / 2**k)
    assert p_selection(0.8, 51, 1000) == pytest.approx(0.8 / 2**4)  # rescaled to 10,000 queries


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        Square(queries=0)
    with pytest.raises(ConfigError):
        Square(p_init=1.5)
    lin, x, y, _ = linear_problem("linf", n=3)
    with pytest.raises(ThreatModelError):
        Square()(lin, x, y, ThreatModel("l1", 1.0))
