"""Small trained models on an mnist-5k subset, shared by the compression tests (trained once per session)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fortify import data, models
from fortify.compress.finetune import finetune


def _trained(name: str, **args: object) -> nn.Module:
    torch.manual_seed(0)
    x, y = data.load("mnist-5k", "train", limit=1500)
    spec = data.info("mnist-5k")
    net = models.Normalized(models.create(name, **args), spec.mean, spec.std)
    finetune(net, (x, y), config={"epochs": 4, "lr": 0.05, "seed": 0}, keep_sparsity=False)
    return net.eval()


@pytest.fixture(scope="session")
def train_data() -> tuple[torch.Tensor, torch.Tensor]:
    return data.load("mnist-5k", "train", limit=512)


@pytest.fixture(scope="session")
def test_data() -> tuple[torch.Tensor, torch.Tensor]:
    return data.load("mnist-5k", "test", limit=500)


@pytest.fixture(scope="session")
def _cnn() -> nn.Module:
    return _trained("small-cnn", channels=(8, 16), hidden=32)


@pytest.fixture(scope="session")
def _mlp() -> nn.Module:
    return _trained("mlp", hidden=(64, 32))


@pytest.fixture
def cnn(_cnn: nn.Module) -> nn.Module:
    return copy.deepcopy(_cnn)


@pytest.fixture
def mlp(_mlp: nn.Module) -> nn.Module:
    return copy.deepcopy(_mlp)
