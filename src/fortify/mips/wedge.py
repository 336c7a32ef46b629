"""Wedge sampling for budgeted MIPS (Cohen & Lewis 1999; Ballard, Kolda, Pinar, Seshadhri 2015, "Diamond
sampling for approximate maximum all-pairs dot-product (MAD) search", wedge sampling section).

Build: per dimension ``j`` the column mass ``||V[:, j]||_1`` and the normalised cumulative distribution of
``|v_ij|`` over ``i`` (``cdf (d, n)`` float32). Search for a query ``u``: draw ``samples`` wedges ``(j, i)`` with
probability ``|u_j| |v_ij| / Z`` (a dimension by its mass ``|u_j| ||V[:, j]||_1``, then an item by inverse CDF)
and give item ``i`` the score ``sum sgn(u_j v_ij)`` over its wedges, an unbiased estimate of ``<u, v_i> / Z``.
The ``budget`` items with the highest estimates (ties: lower id; never-sampled items last, by id) are reranked
with exact inner products. Samples are drawn from a generator seeded by ``seed`` and do not depend on the
budget, so the candidate sets are nested and recall is monotone in the budget; ``budget = n`` is exact.
Cost per query: ``budget`` inner products plus ``samples * log2(n)`` for sampling (counted as flops).
"""
from __future__ import annotations

import numpy as np

from fortify.mips.base import INDEXES, Index, check_option, rerank


@INDEXES.register("wedge", help="wedge sampling (Ballard et al. 2015) then exact rerank (budget: candidates)")
class WedgeIndex(Index):
    """Wedge-sampling MIPS over ``V (n, d)``; ``samples`` wedges per query, ``seed`` of their generator."""

    def __init__(self, samples: int = 8192, seed: int = 0) -> None:
        super().__init__()
        check_option(samples, "samples")
        self.samples, self.seed = int(samples), int(seed)
        self.V = np.empty((0, 0), dtype=np.float32)
        self.mass = np.empty(0, dtype=np.float64)
        self.cdf = np.empty((0, 0), dtype=np.float32)

    def _fit(self, V: np.ndarray) -> None:
        self.V = V
        a = np.abs(V)
        self.mass = a.sum(axis=0, dtype=np.float64)
        cdf = np.cumsum(a.T, axis=1, dtype=np.float64)
        cdf /= np.maximum(cdf[:, -1:], 1e-300)
        self.cdf = cdf.astype(np.float32)

    def estimates(self, U: np.ndarray, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query ``(items, estimate)`` of the sampled items (unique ids, summed wedge signs)."""
        q, d = U.shape
        w = np.abs(U) * self.mass[None, :]
        tot = w.sum(axis=1, keepdims=True)
        p = np.where(tot > 0, w / np.where(tot > 0, tot, 1), 1.0 / d)
        counts = rng.multinomial(self.samples, p / p.sum(axis=1, keepdims=True))
        keys, signs = [], []
        for j in range(d):
            cj = counts[:, j]
            m = int(cj.sum())
            if m == 0 or self.mass[j] == 0:
                continue
            owner = np.repeat(np.arange(q), cj)
            items = np.minimum(np.searchsorted(self.cdf[j], rng.random(m, dtype=np.float32), side="right"), self.n - 1)
            keys.append(owner.astype(np.int64) * self.n + items)
            signs.append(np.sign(U[owner, j]) * np.sign(self.V[items, j]))
        out: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0, np.int64), np.empty(0))] * q
        if not keys:
            return out
        uk, inv = np.unique(np.concatenate(keys), return_inverse=True)
        est = np.bincount(inv, weights=np.concatenate(signs))
        owner = uk // self.n
        bounds = np.searchsorted(owner, np.arange(q + 1))
        return [(uk[bounds[i]:bounds[i + 1]] % self.n, est[bounds[i]:bounds[i + 1]]) for i in range(q)]

    def _search(self, U: np.ndarray, k: int, budget: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        q = U.shape[0]
        b = min(max(budget, k), self.n)
        rng = np.random.default_rng(self.seed)
        ids = np.empty((q, k), dtype=np.int64)
        sc = np.empty((q, k), dtype=np.float32)
        ips = np.empty(q)
        for start in range(0, q, 256):
            for i, (items, est) in enumerate(self.estimates(U[start:start + 256], rng), start=start):
                order = np.lexsort((items, -est))[:b]
                cand = items[order]
                if cand.size < b:
                    rest = np.setdiff1d(np.arange(self.n), cand, assume_unique=True)[: b - cand.size]
                    cand = np.concatenate([cand, rest])
                ids[i], sc[i] = rerank(self.V, U[i], cand, k)
                ips[i] = cand.size
        return ids, sc, ips, float(q * self.samples * np.log2(max(2, self.n)))

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"V": self.V, "mass": self.mass, "cdf": self.cdf}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        V, mass, cdf = arrays["V"], arrays["mass"], arrays["cdf"]
        n, d = V.shape
        if mass.shape != (d,) or cdf.shape != (d, n):
            raise ValueError("inconsistent wedge arrays")
        self.V, self.mass, self.cdf = V, mass, cdf
        self.n, self.d = n, d
