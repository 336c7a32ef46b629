"""Row-wise Spearman rank correlation (Spearman 1904, "The proof and measurement of association
between two things") for metrics that compare one reference map with many (cascading randomisation):
the reference is ranked once, every other map once, on the tensor side. The ranks are those of
:func:`scipy.stats.rankdata` (``method="average"``: tied values share the mean of their places,
1-based), so the correlation equals :func:`fortify.explain.similarity.spearman` (tests: to 1e-12),
including its 0 for a constant row and for a row with a NaN.
"""
from __future__ import annotations

import numpy as np
import torch


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


__all__ = ["average_ranks", "centred_ranks", "spearman_with"]
