"""fortify.metrics: clean accuracy against a hand count, batch-size invariance, flags restored."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fortify.errors import ConfigError
from fortify.metrics import clean_accuracy, correct_mask


def test_matches_a_hand_count_and_restores_flags() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    model[2].eval()  # a deliberately frozen BatchNorm stays frozen, the rest stays in training
    flags = [m.training for m in model.modules()]
    x, y = torch.rand(23, 1, 6), torch.randint(0, 3, (23,))
    model.eval()
    with torch.no_grad():
        expected = (model(x).argmax(1) == y)
    model.train()
    model[2].eval()
    for bs in (1, 5, 23, 100):
        assert torch.equal(correct_mask(model, x, y, bs), expected)
        assert clean_accuracy(model, x, y, bs) == pytest.approx(int(expected.sum()) / 23)
    assert [m.training for m in model.modules()] == flags
    assert clean_accuracy(model, x[:0], y[:0]) == 0.0


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_batch_size(bad: object) -> None:
    with pytest.raises(ConfigError):
        clean_accuracy(nn.Linear(2, 2), torch.rand(3, 2), torch.zeros(3, dtype=torch.long), bad)  # type: ignore[arg-type]
