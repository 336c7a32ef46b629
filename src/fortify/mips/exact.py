"""Exact MIPS: chunked matrix product and top-k, the reference every other index is measured against.

``U (q, d) @ V_c^T`` for row blocks ``V_c`` of ``chunk`` vectors, a running top-k merged per block, so memory
stays ``O(q * chunk)`` whatever ``n``. Cost: ``n`` inner products (``2 n d`` flops) per query; the budget is
ignored (every budget is exact).
"""
from __future__ import annotations

import numpy as np

from fortify.mips.base import INDEXES, Index, check_option, topk_rows


def exact_topk(V: np.ndarray, U: np.ndarray, k: int, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` ids ``(q, k)`` and scores ``(q, k)`` of ``U (q, d)`` against ``V (n, d)`` (float32)."""
    q = U.shape[0]
    best_ids = np.empty((q, 0), dtype=np.int64)
    best = np.empty((q, 0), dtype=np.float32)
    qb = max(1, int(2 ** 25 // max(1, min(chunk, V.shape[0]))))  # ~128 MB score blocks
    out_ids = np.empty((q, k), dtype=np.int64)
    out_sc = np.empty((q, k), dtype=np.float32)
    for q0 in range(0, q, qb):
        Ub = U[q0:q0 + qb]
        best_ids = np.empty((Ub.shape[0], 0), dtype=np.int64)
        best = np.empty((Ub.shape[0], 0), dtype=np.float32)
        for start in range(0, V.shape[0], chunk):
            s = Ub @ V[start:start + chunk].T
            kk = min(k, s.shape[1])
            pos, vals = topk_rows(s, kk)
            cand = np.concatenate([best, vals], axis=1)
            cids = np.concatenate([best_ids, pos + start], axis=1)
            p2, best = topk_rows(cand, min(k, cand.shape[1]))
            best_ids = np.take_along_axis(cids, p2, axis=1)
        out_ids[q0:q0 + qb] = best_ids
        out_sc[q0:q0 + qb] = best
    return out_ids, out_sc


@INDEXES.register("exact", help="exact chunked matmul + top-k (the reference; budget ignored)")
class ExactIndex(Index):
    """Exact search over ``V (n, d)``: ``n`` inner products per query. ``chunk``: rows of ``V`` per block."""

    exact = True

    def __init__(self, chunk: int = 65536) -> None:
        super().__init__()
        check_option(chunk, "chunk")
        self.chunk = int(chunk)
        self.V = np.empty((0, 0), dtype=np.float32)

    def _fit(self, V: np.ndarray) -> None:
        self.V = V

    def _search(self, U: np.ndarray, k: int, budget: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        ids, sc = exact_topk(self.V, U, k, self.chunk)
        return ids, sc, np.full(U.shape[0], float(self.n)), 0.0

    @property
    def full_budget(self) -> int:
        return 1

    def default_budget(self) -> int:
        return 1

    def budgets(self, steps: int = 8) -> list[int]:
        return [1]

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"V": self.V}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        V = arrays["V"]
        if V.ndim != 2 or V.dtype != np.float32:
            raise ValueError("V must be a float32 matrix")
        self.V = np.ascontiguousarray(V)
        self.n, self.d = V.shape
