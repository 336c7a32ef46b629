"""Tiny random networks and a strong reference attack shared by the certify tests."""
from __future__ import annotations

import torch
from torch import nn

from fortify.threat import ThreatModel


def mlp(seed: int, d: int = 12, h: int = 16, k: int = 4, depth: int = 2, scale: float = 1.0) -> nn.Sequential:
    """Random ReLU MLP on ``(1, *)`` inputs flattened to ``d``; ``scale`` multiplies every weight
    (larger scale: more diverse predictions on [0, 1] inputs)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    prev = d
    for _ in range(depth):
        layers += [nn.Linear(prev, h), nn.ReLU()]
        prev = h
    layers.append(nn.Linear(prev, k))
    net = nn.Sequential(*layers).eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 2:
                p.mul_(scale)
    return net


def convnet(seed: int) -> nn.Module:
    """Conv, BN, MaxPool, AvgPool, nested Sequential: input (1, 8, 8), 5 classes."""
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(6)
    bn.running_mean.uniform_(-0.2, 0.2)
    bn.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    feat = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, stride=1, padding=1), bn, nn.ReLU(), nn.AvgPool2d(2))
    return nn.Sequential(feat, nn.Flatten(), nn.Linear(24, 12), nn.ReLU(), nn.Linear(12, 5)).eval()


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{j != y} z_j`` per row."""
    zy = logits.gather(1, y[:, None]).squeeze(1)
    return zy - logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)


def strong_attack_margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                         steps: int = 60, restarts: int = 4, seed: int = 0) -> torch.Tensor:
    """Smallest margin found by projected steepest descent on the margin, random restarts (an
    independent upper bound of the true worst-case margin). Returns ``(N,)``."""
    g = torch.Generator().manual_seed(seed)
    best = margin(model(x), y).detach()
    for r in range(restarts):
        xa = threat.random_init(x, g) if r else x.clone()
        for i in range(steps):
            xa = xa.detach().requires_grad_(True)
            m = margin(model(xa), y)
            best = torch.minimum(best, m.detach())
            (grad,) = torch.autograd.grad(m.sum(), xa)
            step = threat.eps * 0.1 * (1 - i / steps) + 1e-4
            flat = grad.reshape(grad.shape[0], -1)
            if threat.norm == "linf":
                d = -grad.sign()
            elif threat.norm == "l2":
                d = -(flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).reshape(grad.shape)
            else:
                idx = flat.abs().argmax(dim=1)
                d = torch.zeros_like(flat)
                d[torch.arange(len(idx)), idx] = -flat[torch.arange(len(idx)), idx].sign()
                d = d.reshape(grad.shape)
                step = threat.eps * 0.5 * (1 - i / steps) + 1e-4
            xa = threat.project(xa.detach() + step * d, x)
        best = torch.minimum(best, margin(model(xa), y).detach())
    return best


def randomise_bn(m: nn.Module, seed: int | None = 0) -> nn.Module:
    """Non-trivial running statistics and affine terms for every BatchNorm of ``m``, drawn after
    ``torch.manual_seed(seed)`` (``None``: from the global generator as it stands); ``m`` in eval mode."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.1, 0.1)
    return m.eval()
