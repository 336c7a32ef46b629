"""HopSkipJump-specific checks; the shared decision-based contract is in test_decision_based.py."""
from __future__ import annotations

import pytest
import torch
from _blackbox_cases import Counting, linear_problem

from fortify.attacks.hopskipjump import HopSkipJump
from fortify.threat import ThreatModel


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
    res = HopSkipJump(queries=300, init_tries=5)(model, x, y, ThreatModel(norm, 0.3), targeted=target, generator=gen)
    assert res.x_adv.shape == x.shape and not bool(res.success.any())
    assert torch.equal(res.x_adv, x)
    assert res.queries == model.rows <= (300 + 2) * len(y)
