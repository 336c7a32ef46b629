"""Helpers shared by the CLI tests: the one-line-error contract and a small saved model."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fortify import data, models
from fortify.cli import main


def error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI on ``argv``; assert exit status 2 and exactly one ``fortify: error:`` line on
    stderr, and return that line."""
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, (argv, err)
    assert len(err) == 1 and err[0].startswith("fortify: error: "), err
    return err[0]


def save_trained_model(folder: Path, arch: str = "mlp", *, n: int = 1000, lr: float = 2e-3,
                       **arch_args: object) -> Path:
    """A registry model (default ``mlp``, LeNet-300-100) trained for one short pass (batches of 50)
    over the first ``n`` mnist-5k training images, saved as ``folder/<arch>.safetensors``."""
    torch.manual_seed(0)
    net = models.create(arch, in_shape=(1, 28, 28), num_classes=10, **arch_args)
    x, y = data.load("mnist-5k", "train", limit=n)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for i in range(0, n, 50):
        opt.zero_grad()
        F.cross_entropy(net(x[i:i + 50]), y[i:i + 50]).backward()
        opt.step()
    path = folder / f"{arch}.safetensors"
    models.save(net.eval(), path, {"dataset": "mnist-5k"})
    return path
