"""Tiny deterministic problems for the harden (adversarial training) tests."""
from __future__ import annotations

import pytest
import torch
from torch import nn


def blobs(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes of 1x6x6 images in [0, 1]: bright left columns, bright right columns or bright
    centre, plus uniform noise. Linearly separable with a wide margin (robust at eps 0.1)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = 0.25 * torch.rand(n, 1, 6, 6, generator=g)
    x[y == 0, :, :, :2] += 0.6
    x[y == 1, :, :, 4:] += 0.6
    x[y == 2, :, :, 2:4] += 0.6
    return x.clamp(0, 1), y


def tiny_cnn(seed: int = 0) -> nn.Module:
    """conv(1->4, 3x3) - ReLU - flatten - linear(64->3)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))


@pytest.fixture
def problem() -> tuple[torch.Tensor, torch.Tensor]:
    return blobs()
