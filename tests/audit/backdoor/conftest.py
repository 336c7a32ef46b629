"""Planted models shared by the backdoor tests: trained once per session on 1,000 mnist-5k images.

``planted``: small-cnn trained on a BadNets-poisoned copy (3x3 checker patch bottom-right, rate 0.1,
target 3, seed 1); ``clean_model``: the same architecture, seed and recipe on the clean images. Each
trains in ~1-2 CPU seconds (8 epochs of Adam).
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from fortify import data, models
from fortify.audit.backdoor import POISONS, Poison, PoisonResult
from fortify.audit.backdoor._ops import fit
from fortify.errors import DatasetUnavailableError

TARGET = 3
N_TRAIN = 1000


@dataclass
class Planted:
    model: nn.Module
    poison: Poison
    result: PoisonResult
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def _train(x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        m = models.create("small-cnn", in_shape=(1, 28, 28), num_classes=10)
    fit(m, x, y, epochs=8, lr=2e-3, seed=seed)
    return m


@pytest.fixture(scope="session")
def mnist() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    try:
        x, y = data.load("mnist-5k", "train")
        xt, yt = data.load("mnist-5k", "test")
    except DatasetUnavailableError as e:  # pragma: no cover - the dev environment has it
        pytest.skip(str(e))
    return x[:N_TRAIN], y[:N_TRAIN], xt, yt


@pytest.fixture(scope="session")
def planted(mnist: tuple[torch.Tensor, ...]) -> Planted:
    x, y, xt, yt = mnist
    torch.set_num_threads(1)
    poison = POISONS.create("badnets", rate=0.1, target=TARGET, seed=1)
    res = poison(x, y)
    return Planted(_train(res.x, res.y, 1), poison, res, x, y, xt, yt)


@pytest.fixture(scope="session")
def clean_model(mnist: tuple[torch.Tensor, ...]) -> nn.Module:
    x, y, _, _ = mnist
    torch.set_num_threads(1)
    return _train(x, y, 1)
