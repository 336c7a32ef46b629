"""Shared problems for the black-box attack tests (Square, NES, HopSkipJump, Sign-OPT).

* :func:`linear_problem`: a linear classifier with inputs far from the box, so the exact minimal
  adversarial distance is analytic: ``d_i = min_j (z_y - z_j) / ||w_y - w_j||_dual``.
* :class:`Counting`: counts the rows every forward pass sees (to check reported queries).
* :class:`NoBackward`: a model whose backward raises (black-box attacks must not need it).
* :func:`trained_mlp`: a small MLP trained for a few hundred steps on synthetic 1x8x8 "images".
"""
from __future__ import annotations

import functools

import torch
from torch import nn


def min_distance(lin: nn.Linear, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
    """Exact minimal distance ``(N,)`` to the decision boundary of a linear model (box inactive)."""
    with torch.no_grad():
        w, b = lin.weight, lin.bias
        z = x @ w.T + b
        zy = z.gather(1, y[:, None])
        dw = w[y][:, None, :] - w[None]
        dual = dw.abs().sum(-1) if norm == "linf" else dw.norm(dim=-1)
        r = (zy - z) / dual.clamp_min(1e-12)
        r[torch.arange(len(y)), y] = float("inf")
        return r.min(1).values


def linear_problem(norm: str, n: int = 37, d: int = 20, k: int = 4, seed: int = 0):
    """``(model, x (n, d), y (n,), dist (n,))`` with distances within 10% of each other, box inactive."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, k)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=g))
        lin.bias.zero_()
    lin.requires_grad_(False)
    x = 0.5 + 0.05 * torch.randn(4000, d, generator=g)
    with torch.no_grad():
        y = lin(x).argmax(1)
    dist = min_distance(lin, x, y, norm)
    med = dist.median()
    sel = ((dist > med) & (dist < med * 1.1)).nonzero().squeeze(1)[:n]
    assert sel.numel() == n
    return lin, x[sel], y[sel], dist[sel]


class Counting(nn.Module):
    """Wraps a model and counts the rows of every forward pass."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.inner(x)


class _Boom(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        raise RuntimeError("backward called on a black-box model")


class NoBackward(nn.Module):
    """Identity on the input through a Function whose backward raises, then the inner model."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(_Boom.apply(x))


def _blobs(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(123)) * 0.5 + 0.25
    y = torch.randint(0, 3, (n,), generator=g)
    x = (centres[y] + 0.12 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1)
    return x, y


@functools.lru_cache(maxsize=1)
def trained_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 64-32-3 MLP trained 300 Adam steps on 3 Gaussian blobs of 1x8x8 images; returns
    ``(model, x_test (64, 1, 8, 8), y_test (64,))`` with the test points correctly classified."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 3))
    x, y = _blobs(512, g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        idx = torch.randint(0, 512, (64,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().requires_grad_(False)
    xt, yt = _blobs(200, g)
    with torch.no_grad():
        ok = model(xt).argmax(1) == yt
    return model, xt[ok][:64], yt[ok][:64]
