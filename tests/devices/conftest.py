"""Fixtures of the device tests: a saved model and a file of inputs (helpers: ``_device_helpers``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fortify import data, models


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry ``mlp`` (LeNet-300-100) fitted for 20 Adam steps on 400 mnist-5k images, saved by fortify."""
    torch.manual_seed(0)
    net = models.create("mlp", in_shape=(1, 28, 28), num_classes=10)
    x, y = data.load("mnist-5k", "train", limit=400)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for i in range(0, 400, 20):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x[i:i + 20]), y[i:i + 20]).backward()
        opt.step()
    path = tmp_path_factory.mktemp("model") / "mlp.safetensors"
    models.save(net.eval(), path, {"dataset": "mnist-5k"})
    return path


@pytest.fixture(scope="session")
def inputs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 32 mnist-5k test images as a ``.npy`` file (``fortify predict --data``)."""
    x, _ = data.load("mnist-5k", "test", limit=32)
    path = tmp_path_factory.mktemp("inputs") / "x.npy"
    np.save(path, x.numpy())
    return path
