"""Greedy-MIPS (Yu, Hsieh, Lei, Dhillon 2017, "A Greedy Approach for Budgeted Maximum Inner Product Search").

Build: for every dimension ``j`` the ids of ``V (n, d)`` sorted by ``v_ij`` (``sorted_ids (d, n)`` int32) and the
sorted values (``sorted_vals (d, n)``). Screening for a query ``u``: the entries ``z_ij = u_j v_ij`` of the ``d``
lists, each read in descending order of ``z`` (from the top of list ``j`` when ``u_j > 0``, from the bottom when
``u_j < 0``). Greedy-MIPS pops the largest remaining ``z`` with a heap over the ``d`` list heads; its first
``budget`` pops are exactly the ``budget`` largest ``z_ij`` overall, which this implementation finds for all
queries at once by bisection on a threshold ``tau`` (``d`` vectorised ``searchsorted`` per step), then reranks
the distinct items of those pops with exact inner products.
Cost per query: ``<= budget`` inner products (the distinct candidates) plus ``O(d log n)`` per bisection step
(counted as flops); ``budget = n d`` (every entry) is exact. Pop sets are nested in ``budget``: recall is
monotone in it.
"""
from __future__ import annotations

import numpy as np

from fortify.mips.base import INDEXES, Index, rerank

STEPS = 40


@INDEXES.register("greedy", help="Greedy-MIPS (Yu et al. 2017): per-dimension sorted lists (budget: pops)")
class GreedyMIPSIndex(Index):
    """Greedy-MIPS over ``V (n, d)``; ``budget`` is the number of pops (entries ``u_j v_ij`` screened)."""

    def __init__(self) -> None:
        super().__init__()
        self.V = np.empty((0, 0), dtype=np.float32)
        self.sorted_ids = np.empty((0, 0), dtype=np.int32)
        self.sorted_vals = np.empty((0, 0), dtype=np.float32)

    def _fit(self, V: np.ndarray) -> None:
        self.V = V
        order = np.argsort(V, axis=0, kind="stable").T  # ascending per dimension, (d, n)
        self.sorted_ids = np.ascontiguousarray(order.astype(np.int32))
        self.sorted_vals = np.ascontiguousarray(np.take_along_axis(V.T, order, axis=1))

    def _counts(self, U: np.ndarray, tau: np.ndarray) -> np.ndarray:
        """Entries with ``u_j v_ij >= tau`` per query and dimension, ``(q, d)``."""
        q, d = U.shape
        out = np.zeros((q, d), dtype=np.int64)
        for j in range(d):
            u = U[:, j]
            col = self.sorted_vals[j]
            pos, neg, zero = u > 0, u < 0, u == 0
            if pos.any():  # v >= tau / u
                out[pos, j] = self.n - np.searchsorted(col, tau[pos] / u[pos], side="left")
            if neg.any():  # v <= tau / u
                out[neg, j] = np.searchsorted(col, tau[neg] / u[neg], side="right")
            out[zero, j] = np.where(tau[zero] <= 0, self.n, 0)
        return out

    def _thresholds(self, U: np.ndarray, budget: int) -> np.ndarray:
        """Per query the largest ``tau`` with at least ``budget`` entries ``>= tau`` (bisection)."""
        bound = np.abs(U).max(axis=1) * np.abs(self.sorted_vals).max() + 1e-6
        lo, hi = -bound, bound  # count(lo) = n d >= budget, count(hi) = 0
        for _ in range(STEPS):
            mid = 0.5 * (lo + hi)
            ok = self._counts(U, mid).sum(axis=1) >= budget
            lo = np.where(ok, mid, lo)
            hi = np.where(ok, hi, mid)
        return lo

    def _search(self, U: np.ndarray, k: int, budget: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        q, d = U.shape
        pops = min(budget, self.full_budget)
        counts = self._counts(U, self._thresholds(U, pops))
        ids = np.empty((q, k), dtype=np.int64)
        sc = np.empty((q, k), dtype=np.float32)
        ips = np.empty(q)
        for i in range(q):
            parts = [self.sorted_ids[j, self.n - c:] if U[i, j] > 0 else self.sorted_ids[j, :c]
                     for j, c in enumerate(counts[i].tolist()) if c]
            cand = np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int32)
            if cand.size < k:  # too few pops for k answers: fill with the next ids (cheap, still exact scores)
                rest = np.setdiff1d(np.arange(self.n), cand)[: k - cand.size]
                cand = np.concatenate([cand, rest])
            ids[i], sc[i] = rerank(self.V, U[i], cand.astype(np.int64), k)
            ips[i] = cand.size
        return ids, sc, ips, float(STEPS * q * d * np.log2(max(2, self.n)))

    @property
    def full_budget(self) -> int:
        return int(self.n * self.d)

    def default_budget(self) -> int:
        return max(1, min(self.full_budget, self.n // 20))

    def budgets(self, steps: int = 8) -> list[int]:
        lo = max(1, self.n // 1000)
        ladder = np.geomspace(lo, self.n, num=max(2, steps - 1)).round().astype(int).tolist() + [self.full_budget]
        return [int(b) for b in np.unique(ladder)]

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"V": self.V, "sorted_ids": self.sorted_ids, "sorted_vals": self.sorted_vals}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        V, ids, vals = arrays["V"], arrays["sorted_ids"], arrays["sorted_vals"]
        n, d = V.shape
        if ids.shape != (d, n) or vals.shape != (d, n) or (n and (ids.min() < 0 or ids.max() >= n)):
            raise ValueError("inconsistent Greedy-MIPS arrays")
        self.V, self.sorted_ids, self.sorted_vals = V, ids, vals
        self.n, self.d = n, d

