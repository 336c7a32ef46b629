"""Deep Compression with iterative pruning (``prune_rounds``): the cubic sparsity schedule, the retraining
budget split over the rounds, nested masks and the exact final sparsity."""
from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import fortify.compress.deep_compression as dc_mod
from fortify.compress import create
from fortify.compress.base import weight_layers
from fortify.errors import ConfigError

X = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
SPARSITY = {1: 0.9, 3: 0.6}


def test_rounds_follow_the_cubic_schedule_and_keep_pruned_weights_dead(mlp: nn.Module, train_data,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    real = dc_mod.finetune

    def spy(model: nn.Module, data: Any, **kw: Any) -> Any:
        zeros = {i: float((m.weight == 0).float().mean()) for i, m in weight_layers(model)}
        calls.append({"zeros": zeros, "dead": {i: (m.weight == 0).clone() for i, m in weight_layers(model)},
                      "epochs": kw["config"]["epochs"]})
        return real(model, data, **kw)

    monkeypatch.setattr(dc_mod, "finetune", spy)
    res = create("deep_compression", sparsity=SPARSITY, bits=6, prune_epochs=5, share_epochs=0, prune_rounds=3,
                 config={"lr": 0.02})(mlp, X, data=train_data)
    assert [c["epochs"] for c in calls] == [2, 1, 2]  # round(5 r / 3) = 2, 3, 5: 5 epochs in total
    for r, c in enumerate(calls, start=1):
        frac = 1 - (1 - r / 3) ** 3  # 0.704, 0.963, 1
        for i, s in SPARSITY.items():
            assert c["zeros"][i] == pytest.approx(s * frac, abs=2e-3)
    final = dict(weight_layers(res.model))
    for r in range(2):  # a weight pruned in an earlier round stays zero to the end
        for i in SPARSITY:
            assert bool(final[i].weight[calls[r]["dead"][i]].eq(0).all())
    for i, s in SPARSITY.items():
        assert float((final[i].weight == 0).float().mean()) == pytest.approx(s, abs=2e-3)


def test_one_round_is_one_shot_pruning(mlp: nn.Module, train_data) -> None:
    a = create("deep_compression", sparsity=SPARSITY, bits=5, prune_epochs=0, share_epochs=0)(mlp, X)
    b = create("deep_compression", sparsity=SPARSITY, bits=5, prune_epochs=0, share_epochs=0, prune_rounds=1)(mlp, X)
    for (_, ma), (_, mb) in zip(weight_layers(a.model), weight_layers(b.model)):
        assert torch.equal(ma.weight, mb.weight)
    with pytest.raises(ConfigError, match="prune_rounds"):
        create("deep_compression", prune_rounds=0)
