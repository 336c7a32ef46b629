"""Selective prediction against analytic answers: a perfect ranking has E-AURC 0, a reversed one the worst AURC,
ties are order-free, and AURC equals a brute-force mean over random tie orders."""
from __future__ import annotations

import pytest
import torch

from fortify.audit.selective import accuracy_at_coverage, risk_coverage, risk_coverage_figure
from fortify.errors import ConfigError, InputError


def test_perfect_ranking_has_zero_excess() -> None:
    correct = torch.tensor([1, 1, 1, 0, 1, 0, 1, 1], dtype=torch.bool)
    conf = correct.double() + 0.01 * torch.arange(8)  # every correct one above every error
    rc = risk_coverage(conf, correct)
    assert rc.e_aurc == pytest.approx(0.0, abs=1e-12)
    # hand-computed optimal AURC: 6 correct, then errors at k=7 (1/7) and k=8 (2/8)
    assert rc.aurc == pytest.approx((1 / 7 + 2 / 8) / 8)
    assert rc.accuracy_at(0.75) == 1.0 and rc.coverage_at(0.0) == pytest.approx(0.75)


def test_reversed_ranking_and_hand_curve() -> None:
    correct = torch.tensor([True, False, True, True])
    rc = risk_coverage(torch.tensor([0.1, 0.9, 0.5, 0.3]), correct)
    # order: wrong, right, right, right -> risks 1, 1/2, 1/3, 1/4
    assert rc.risk.tolist() == pytest.approx([1, 1 / 2, 1 / 3, 1 / 4])
    assert rc.aurc == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert rc.e_aurc > 0.4
    assert accuracy_at_coverage(torch.tensor([0.1, 0.9, 0.5, 0.3]), correct, 0.5) == pytest.approx(0.5)


def test_ties_are_the_mean_over_random_orders() -> None:
    g = torch.Generator().manual_seed(0)
    conf = torch.randint(0, 4, (40,), generator=g).double()
    correct = torch.rand(40, generator=g) > 0.3
    rc = risk_coverage(conf, correct)
    sims = []
    for _ in range(3000):
        perm = torch.randperm(40, generator=g)
        order = perm[conf[perm].argsort(descending=True, stable=True)]
        errs = (~correct[order]).double().cumsum(0)
        sims.append(float((errs / torch.arange(1, 41)).mean()))
    assert rc.aurc == pytest.approx(sum(sims) / len(sims), abs=2e-3)
    # the curve does not depend on the input order
    p = torch.randperm(40, generator=g)
    assert risk_coverage(conf[p], correct[p]).aurc == pytest.approx(rc.aurc, abs=1e-12)


def test_bad_inputs() -> None:
    with pytest.raises(InputError):
        risk_coverage(torch.tensor([0.1, float("nan")]), torch.tensor([True, False]))
    with pytest.raises(InputError):
        risk_coverage(torch.tensor([0.1, 0.2]), torch.tensor([True]))
    with pytest.raises(InputError):
        risk_coverage(torch.tensor([0.1, 0.2]), torch.tensor([2, 0]))
    with pytest.raises(ConfigError):
        risk_coverage(torch.tensor([0.1, 0.2]), torch.tensor([True, False])).accuracy_at(1.5)


def test_figure(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rc = risk_coverage(torch.rand(50), torch.rand(50) > 0.2)
    assert risk_coverage_figure({"msp": rc}, tmp_path / "rc.png").stat().st_size > 1000
