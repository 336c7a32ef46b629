"""Similarity of two attribution maps, row by row: the measures of the sanity checks (cascading
randomisation, random logit) and of explanation drift under compression.

* ``spearman``: Spearman rank correlation of the flattened rows (average ranks for ties; 0 where a
  row is constant), in [-1, 1]. Cost: two row-wise rank computations (``N d log d``).
* ``ssim``: structural similarity (Wang, Bovik, Sheikh & Simoncelli 2004) of the maps summed over
  channels and scaled to [0, 1] per row (min-max), ``C1 = 0.01^2``, ``C2 = 0.03^2``, a uniform
  ``7 x 7`` window (the image size when smaller) over images ``(N, C, H, W)``, one window over the
  whole row otherwise; in [-1, 1]. Cost: a few pooling passes over ``N H W`` values.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fortify.errors import ConfigError
from fortify.explain.metrics._rank import centred_ranks, spearman_with

SIMILARITIES = ("spearman", "ssim")
_C1, _C2 = 0.01 ** 2, 0.03 ** 2


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Spearman correlation of ``(N, ...)`` tensors (average ranks for ties, as scipy's
    ``rankdata``; tensor-side ranks, :mod:`fortify.explain.metrics._rank`); 0 where a row is constant or
    holds a NaN. Returns ``(N,)`` in ``a``'s dtype and device."""
    return spearman_with(centred_ranks(a), b).to(device=a.device, dtype=a.dtype)


def _unit(m: torch.Tensor) -> torch.Tensor:
    """Each row min-max scaled to [0, 1] (a constant row becomes 0): ``(N, ...)``."""
    flat = m.reshape(m.shape[0], -1)
    lo, hi = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return ((flat - lo) / span).reshape(m.shape)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise SSIM of two attribution maps ``(N, ...)`` (see the module docstring): ``(N,)``."""
    n = a.shape[0]
    if a.dim() == 4:
        pa, pb = _unit(a.double().sum(dim=1, keepdim=True)), _unit(b.double().sum(dim=1, keepdim=True))
        k = (min(7, a.shape[2]), min(7, a.shape[3]))

        def mean(t: torch.Tensor) -> torch.Tensor:
            return F.avg_pool2d(t, k, stride=1)
    else:
        pa, pb = _unit(a.double().reshape(n, 1, -1)), _unit(b.double().reshape(n, 1, -1))

        def mean(t: torch.Tensor) -> torch.Tensor:
            return t.mean(dim=2, keepdim=True)
    mu_a, mu_b = mean(pa), mean(pb)
    var_a, var_b = mean(pa * pa) - mu_a ** 2, mean(pb * pb) - mu_b ** 2
    cov = mean(pa * pb) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + _C1) * (2 * cov + _C2)) / ((mu_a ** 2 + mu_b ** 2 + _C1) * (var_a + var_b + _C2))
    return s.reshape(n, -1).mean(dim=1).to(device=a.device, dtype=a.dtype)


def similarity(a: torch.Tensor, b: torch.Tensor, kind: str = "spearman") -> torch.Tensor:
    """``spearman`` or ``ssim`` of each row of ``a`` with the same row of ``b``: ``(N, ...) -> (N,)``."""
    if kind == "spearman":
        return spearman(a, b)
    if kind == "ssim":
        return ssim(a, b)
    raise ConfigError(f"similarity must be one of {', '.join(SIMILARITIES)}, got {kind!r}")


__all__ = ["SIMILARITIES", "similarity", "spearman", "ssim"]
