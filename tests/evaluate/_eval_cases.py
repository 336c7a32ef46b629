"""Tiny problems and gradient-masked models for the evaluate tests (all deterministic, CPU, < 1 s)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def blobs(n: int = 96, d: int = 16, classes: int = 3, noise: float = 0.12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs in ``[0, 1]^d``: ``x (n, d)``, ``y (n,)``."""
    g = torch.Generator().manual_seed(seed)
    centers = 0.25 + 0.5 * torch.rand(classes, d, generator=g)
    y = torch.arange(n) % classes
    x = (centers[y] + noise * torch.randn(n, d, generator=g)).clamp(0, 1)
    return x, y


def mlp(d: int = 16, classes: int = 3, hidden: int = 32, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 200, lr: float = 0.02) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


def trained_mlp(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    x, y = blobs(seed=seed)
    return train(mlp(seed=seed), x, y), x, y


class Quantize(nn.Module):
    """Non-differentiable input quantization to ``levels`` levels (zero gradient almost everywhere)."""

    def __init__(self, levels: int = 8) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * (self.levels - 1)) / (self.levels - 1)


class Scaled(nn.Module):
    """Saturated outputs: ``softmax(model(x) * temperature) * scale`` (probability-like if ``softmax``)."""

    def __init__(self, model: nn.Module, temperature: float, softmax: bool, scale: float = 1.0) -> None:
        super().__init__()
        self.model, self.t, self.softmax, self.scale = model, temperature, softmax, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x) * self.t
        return torch.softmax(z, dim=1) * self.scale if self.softmax else z


class NoisyInput(nn.Module):
    """Randomized model: ``model(x + sigma * N(0, I))`` on every call."""

    def __init__(self, model: nn.Module, sigma: float) -> None:
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x + self.sigma * torch.randn_like(x))
