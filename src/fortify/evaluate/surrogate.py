"""A quickly trained, standard (non-robust) surrogate for the transfer sanity check.

Papernot et al. 2017 ("Practical black-box attacks against machine learning"): adversarial
examples crafted on a surrogate trained on the same task often transfer. If they break points the
target's own gradients could not, the target's gradients are masked (Athalye et al. 2018).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def train_surrogate(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, steps: int = 150,
                    hidden: int = 128, lr: float = 1e-2, seed: int = 0) -> nn.Module:
    """Train a one-hidden-layer MLP on ``x (N, ...)``, ``y (N,)`` with full-batch Adam.

    Returns the surrogate in eval mode on ``x.device``; the global RNG is not touched."""
    gen = torch.Generator().manual_seed(seed)
    d = x[0].numel()
    net = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / max(p.shape[-1], 1)) ** 0.5)
    net = net.to(x.device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    xs, ys = x.detach(), y.detach()
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(xs), ys)
            loss.backward()
            opt.step()
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net
