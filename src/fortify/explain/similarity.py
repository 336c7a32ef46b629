"""Similarity of two attribution maps, row by row: the measures of the sanity checks (cascading
randomisation, random logit) and of explanation drift under compression.

* ``spearman``: Spearman rank correlation of the flattened rows (average ranks for ties; 0 where a
  row is constant), in [-1, 1]. Cost: two row-wise rank computations (``N d log d``).
* ``ssim``: structural similarity (Wang, Bovik, Sheikh & Simoncelli 2004) of the maps summed over
  channels and scaled to [0, 1] per row (min-max), ``C1 = 0.01^2``, ``C2 = 0.03^2``, a uniform
  ``7 x 7`` window (the image size when smaller) over images ``(N, C, H, W)``, one window over the
  whole row otherwise; in [-1, 1]. Cost: a few pooling passes over ``N H W`` values.

Ranks (:func:`average_ranks`, :func:`centred_ranks`, :func:`spearman_with`) are computed on the tensor side,
equal to :func:`scipy.stats.rankdata` (``method="average"``: tied values share the mean of their 1-based
places; tests to 1e-12): a metric comparing one reference map with many (cascading randomisation) ranks the
reference once.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fortify.errors import ConfigError

SIMILARITIES = ("spearman", "ssim")
_C1, _C2 = 0.01 ** 2, 0.03 ** 2


def _argsort_rows(a: torch.Tensor) -> torch.Tensor:
    """Row-wise argsort (ascending, ties in any order) of ``(N, d)``: numpy's on CPU (its SIMD
    quicksort is ~3x torch's sort on AVX-512 machines), torch's elsewhere."""
    if a.device.type == "cpu" and a.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.argsort(a.detach().numpy(), axis=1)).long()
    return torch.sort(a, dim=1).indices


def average_ranks(a: torch.Tensor) -> torch.Tensor:
    """1-based ranks of each row of ``(N, d)``, ties sharing their mean rank: ``(N, d)`` float64.
    Cost: one sort of ``N d`` values and a few passes over them."""
    n, d = a.shape
    order = _argsort_rows(a)  # any order within a tie: tied places all get the group's mean
    s = a.gather(1, order)
    pos = torch.arange(d, device=a.device).expand(n, d)
    first = torch.ones_like(s, dtype=torch.bool)  # a tie group starts here
    first[:, 1:] = s[:, 1:] != s[:, :-1]
    last = torch.ones_like(first)  # a tie group ends here
    last[:, :-1] = first[:, 1:]
    start = torch.where(first, pos, torch.zeros_like(pos)).cummax(dim=1).values
    end = torch.where(last, pos, torch.full_like(pos, d - 1)).flip(1).cummin(dim=1).values.flip(1)
    ranks = torch.empty(n, d, dtype=torch.float64, device=a.device)
    ranks.scatter_(1, order, (start + end).double() / 2 + 1)
    return ranks


def centred_ranks(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks of the flattened rows of ``(N, ...)`` minus their row mean, and their row norms:
    ``((N, d), (N,))``, float64; the norm is 0 for a row with a NaN."""
    flat = a.reshape(a.shape[0], -1)
    r = average_ranks(flat)
    r = r - r.mean(dim=1, keepdim=True)
    nan_row = torch.isnan(flat).any(dim=1)  # scipy's ranks are NaN there, and similarity.spearman gives 0
    return r, torch.where(nan_row, torch.zeros_like(r[:, 0]), r.norm(dim=1))


def spearman_with(ref: tuple[torch.Tensor, torch.Tensor], b: torch.Tensor) -> torch.Tensor:
    """Spearman correlation of each row of ``b (N, ...)`` with the reference ranks ``ref``
    (:func:`centred_ranks`); 0 where either row is constant. ``(N,)`` in ``b``'s dtype."""
    ra, na = ref
    rb, nb = centred_ranks(b)
    den = na * nb
    safe = torch.where(den > 0, den, torch.ones_like(den))
    return torch.where(den > 0, (ra * rb).sum(dim=1) / safe, torch.zeros_like(den)).to(dtype=b.dtype)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Spearman correlation of ``(N, ...)`` tensors (average ranks for ties, as scipy's
    ``rankdata``; tensor-side ranks, :func:`centred_ranks`); 0 where a row is constant or
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


__all__ = ["SIMILARITIES", "average_ranks", "centred_ranks", "similarity", "spearman", "spearman_with", "ssim"]
