"""Sign-OPT-specific checks and the per-sample query budget it shares with HopSkipJump; the shared
decision-based contract is in test_decision_based.py."""
from __future__ import annotations

import torch


def test_affordable_counts_rows_per_sample() -> None:
    from fortify.attacks._blackbox import QueryBudget
    from fortify.attacks.base import Oracle

    q = QueryBudget(Oracle(torch.nn.Identity(), 2), 3, budget=2, device=torch.device("cpu"))
    q.spent[1] = 1
    got = q.affordable(torch.tensor([0, 1, 0, 1, 0, 2, 2, 2]))
    assert got.tolist() == [True, True, True, False, False, True, True, False]
