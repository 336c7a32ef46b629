"""MIPS-to-NN reduction plus sign-random-projection LSH (Bachrach et al. 2014, "Speeding up the Xbox recommender
system using a Euclidean transformation for inner-product spaces"; the asymmetric-hashing idea of Shrivastava &
Li 2014, "Asymmetric LSH (ALSH) for sublinear time MIPS", with the simple-LSH/extra-dimension transform of
Neyshabur & Srebro 2015).

Build: ``M = max ||v_i||``; each item becomes ``v' = [v, sqrt(M^2 - ||v||^2)] / M`` (unit norm, ``(n, d + 1)``,
stored once: ``V`` is its first ``d`` columns times ``M``) and each query ``u' = [u, 0] / ||u||``, so
``<u', v'> = <u, v> / (M ||u||)``: MIPS becomes maximum cosine (nearest neighbour) search. ``tables`` hash tables of
``bits`` signs of Gaussian projections (SimHash, Charikar 2002) bucket the items; a query's candidates are ranked
by the number of tables in which they share its bucket (collision counting; ties: lower id, never-colliding items
last by id) and the ``budget`` best are reranked exactly. Candidate sets are nested in the budget (monotone
recall); ``budget = n`` is exact. Known trap (reported by the anchors): on data whose norms vary widely the
augmented coordinate dominates and the reduction loses resolution; the benchmark measures it.
Cost per query: ``budget`` inner products plus ``tables * bits`` projections and ``tables * log2(n)`` lookups.
"""
from __future__ import annotations

import numpy as np

from fortify.mips.base import INDEXES, Index, check_option, rerank


def augment(V: np.ndarray) -> tuple[np.ndarray, float]:
    """``(V' (n, d + 1) unit rows, M)``: the extra-dimension transform of ``V (n, d)``."""
    norms = np.linalg.norm(V, axis=1)
    M = float(norms.max()) or 1.0
    extra = np.sqrt(np.maximum(M * M - norms * norms, 0.0))
    return np.ascontiguousarray(np.hstack([V, extra[:, None]]) / M, dtype=np.float32), M


@INDEXES.register("alsh", help="MIPS-to-NN transform + SimHash tables, collision counting (budget: candidates)")
class ALSHIndex(Index):
    """Extra-dimension reduction + SimHash LSH over ``V (n, d)``: ``tables`` tables of ``bits`` bits (default
    ``log2(n / 32)``), projections drawn with ``seed``."""

    def __init__(self, tables: int = 24, bits: int | None = None, seed: int = 0) -> None:
        super().__init__()
        check_option(tables, "tables")
        if bits is not None:
            check_option(bits, "bits")
            if bits > 30:
                from fortify.errors import ConfigError

                raise ConfigError(f"bits must be <= 30, got {bits}")
        self.tables, self.bits, self.seed = int(tables), bits, int(seed)
        self.Vaug = np.empty((0, 0), dtype=np.float32)
        self.scale = 1.0
        self.proj = np.empty((0, 0), dtype=np.float32)
        self.keys = np.empty((0, 0), dtype=np.int64)
        self.members = np.empty((0, 0), dtype=np.int32)

    def _codes(self, X: np.ndarray) -> np.ndarray:
        """Bucket key per table of unit rows ``X (m, d + 1)``: ``(m, tables)`` int64."""
        b = int(self.bits or 1)
        signs = (X @ self.proj.T > 0).reshape(X.shape[0], self.tables, b)
        return (signs.astype(np.int64) << np.arange(b, dtype=np.int64)).sum(axis=2)

    def _fit(self, V: np.ndarray) -> None:
        self.Vaug, self.scale = augment(V)
        if self.bits is None:
            self.bits = int(np.clip(round(np.log2(max(2, V.shape[0]) / 32)), 1, 30))
        rng = np.random.default_rng(self.seed)
        self.proj = rng.standard_normal((self.tables * self.bits, V.shape[1] + 1)).astype(np.float32)
        codes = self._codes(self.Vaug)
        order = np.argsort(codes, axis=0, kind="stable").T  # (tables, n)
        self.members = np.ascontiguousarray(order.astype(np.int32))
        self.keys = np.ascontiguousarray(np.take_along_axis(codes.T, order, axis=1))

    def _search(self, U: np.ndarray, k: int, budget: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        q, d = U.shape
        b = min(max(budget, k), self.n)
        unit = U / np.maximum(np.linalg.norm(U, axis=1, keepdims=True), 1e-30)
        codes = self._codes(np.hstack([unit, np.zeros((q, 1), dtype=np.float32)]))
        lo = np.stack([np.searchsorted(self.keys[t], codes[:, t], side="left") for t in range(self.tables)], 1)
        hi = np.stack([np.searchsorted(self.keys[t], codes[:, t], side="right") for t in range(self.tables)], 1)
        V = self.Vaug[:, :d]
        ids = np.empty((q, k), dtype=np.int64)
        sc = np.empty((q, k), dtype=np.float32)
        ips = np.empty(q)
        for i in range(q):
            parts = [self.members[t, lo[i, t]:hi[i, t]] for t in range(self.tables) if hi[i, t] > lo[i, t]]
            if parts:
                items, counts = np.unique(np.concatenate(parts), return_counts=True)
                cand = items[np.lexsort((items, -counts))[:b]].astype(np.int64)
            else:
                cand = np.empty(0, dtype=np.int64)
            if cand.size < b:
                rest = np.setdiff1d(np.arange(self.n), cand, assume_unique=True)[: b - cand.size]
                cand = np.concatenate([cand, rest])
            ids[i], s = rerank(V, U[i], cand, k)
            sc[i] = s * self.scale
            ips[i] = cand.size
        flops = q * (2.0 * (d + 1) * self.tables * int(self.bits or 1) + 2 * self.tables * np.log2(max(2, self.n)))
        return ids, sc, ips, flops

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"Vaug": self.Vaug, "scale": np.array([self.scale]), "proj": self.proj, "keys": self.keys,
                "members": self.members}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        Va, proj, keys, mem = arrays["Vaug"], arrays["proj"], arrays["keys"], arrays["members"]
        n, d1 = Va.shape
        if proj.shape != (self.tables * int(self.bits or 0), d1) or keys.shape != (self.tables, n) \
                or mem.shape != (self.tables, n):
            raise ValueError("inconsistent ALSH arrays")
        self.Vaug, self.scale, self.proj, self.keys, self.members = Va, float(arrays["scale"][0]), proj, keys, mem
        self.n, self.d = n, d1 - 1
