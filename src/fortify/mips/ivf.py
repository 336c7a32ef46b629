"""IVF: k-means clusters with norm-aware probing (inverted file, Jegou et al. 2011, adapted to inner product).

Build: spherical k-means with inner-product assignment (:mod:`fortify.mips._kmeans`, ``clustering="spherical"``:
unit centroids, each vector to the centroid of its largest inner product, so clusters group directions and a
query's probe order matches how vectors were assigned; ``"l2"``: Lloyd's k-means) of ``V (n, d)`` into ``nlist``
clusters; ``V`` is stored once, permuted so each cluster is contiguous, with each cluster's member mean ``c``
(which carries the members' norms) and radius ``r = max ||v - c||``.
Search: a query ``u`` ranks the clusters by ``<u, c> + alpha ||u|| r`` (``alpha = 1`` is the Cauchy-Schwarz
upper bound on any member's inner product, ``alpha = 0`` the plain centroid score: norm-aware probing, default ``alpha = 0.05``, sits in
between and favours wide clusters of long vectors) and scans the ``budget`` best (``nprobe``) clusters exactly.
Batched cluster-major: each probed cluster's rows meet all the queries that probe it in one matrix product.
Cost per query: ``nlist + sum of probed cluster sizes`` inner products; ``budget = nlist`` is exact.
Probe sets are nested in the budget, so recall is monotone in it.
"""
from __future__ import annotations

import numpy as np

from fortify.mips._kmeans import group, kmeans
from fortify.errors import ConfigError
from fortify.mips.base import INDEXES, Index, check_option, topk_rows


def scan_clusters(V: np.ndarray, perm: np.ndarray, offsets: np.ndarray, U: np.ndarray, probes: np.ndarray,
                  k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-``k`` of each query ``U (q, d)`` over the rows of its probed clusters ``probes (q, p)``
    (``V`` cluster-contiguous, ``perm`` its original ids; ``-1`` = no cluster). Returns ``(ids, scores, rows
    scanned per query)``; ids ``-1`` / scores ``-inf`` pad a row whose clusters hold fewer than ``k`` vectors."""
    q, p = probes.shape
    sc = np.full((q, p, k), -np.inf, dtype=np.float32)
    ids = np.full((q, p, k), -1, dtype=np.int64)
    flat = probes.ravel()
    order = np.argsort(flat, kind="stable")
    clusters, starts = np.unique(flat[order], return_index=True)
    ends = np.append(starts[1:], flat.size)
    for c, a, b in zip(clusters.tolist(), starts.tolist(), ends.tolist()):
        lo, hi = (int(offsets[c]), int(offsets[c + 1])) if c >= 0 else (0, 0)
        if hi == lo:
            continue
        who = order[a:b]
        qs, slot = who // p, who % p
        s = U[qs] @ V[lo:hi].T
        kk = min(k, hi - lo)
        pos, vals = topk_rows(s, kk)
        sc[qs, slot, :kk] = vals
        ids[qs, slot, :kk] = perm[lo + pos]
    sizes = np.where(probes >= 0, np.diff(offsets)[np.maximum(probes, 0)], 0).sum(axis=1)
    pos, vals = topk_rows(sc.reshape(q, p * k), k)
    return np.take_along_axis(ids.reshape(q, p * k), pos, axis=1), vals, sizes.astype(np.float64)


@INDEXES.register("ivf", help="k-means clusters, norm-aware probing (budget: clusters probed)")
class IVFIndex(Index):
    """IVF over ``V (n, d)``. ``nlist``: clusters (default ``round(sqrt(n))``); ``alpha``: weight of
    ``||u|| * radius`` in the probe score; ``clustering``: ``"spherical"`` (inner-product) or ``"l2"`` k-means;
    ``iters``/``train_size``/``seed``: k-means."""

    def __init__(self, nlist: int | None = None, alpha: float = 0.05, clustering: str = "spherical", iters: int = 10,
                 train_size: int = 65536, seed: int = 0) -> None:
        super().__init__()
        if nlist is not None:
            check_option(nlist, "nlist")
        check_option(alpha, "alpha", minimum=0.0)
        check_option(iters, "iters", minimum=0)
        if clustering not in ("spherical", "l2"):
            raise ConfigError(f"clustering must be 'spherical' or 'l2', got {clustering!r}")
        self.clustering = clustering
        check_option(train_size, "train_size")
        self.nlist, self.alpha, self.iters, self.train_size, self.seed = nlist, float(alpha), int(iters), \
            int(train_size), int(seed)
        self.V = np.empty((0, 0), dtype=np.float32)
        self.perm = np.empty(0, dtype=np.int64)
        self.offsets = np.zeros(1, dtype=np.int64)
        self.centroids = np.empty((0, 0), dtype=np.float32)
        self.radius = np.empty(0, dtype=np.float32)

    def _fit(self, V: np.ndarray) -> None:
        nl = int(self.nlist or max(1, round(np.sqrt(V.shape[0]))))
        sph = self.clustering == "spherical"
        C, lab = kmeans(V, nl, iters=self.iters, train_size=self.train_size, seed=self.seed,
                        metric="ip" if sph else "l2", spherical=sph)
        self.perm, self.offsets = group(lab, C.shape[0])
        self.V = V[self.perm]  # the one copy, cluster-contiguous
        sizes = np.diff(self.offsets)
        means = np.zeros_like(C)
        full = sizes > 0
        means[full] = np.add.reduceat(self.V, self.offsets[:-1][full], axis=0) / sizes[full, None]
        self.centroids = C = means.astype(np.float32)
        diff = np.linalg.norm(self.V - C[lab[self.perm]], axis=1)
        self.radius = np.zeros(C.shape[0], dtype=np.float32)
        np.maximum.at(self.radius, lab[self.perm], diff.astype(np.float32))
        self.nlist = C.shape[0]

    def probe_scores(self, U: np.ndarray) -> np.ndarray:
        """Probe score of every cluster for each query, ``(q, nlist)``; ``nlist`` inner products per query."""
        s = U @ self.centroids.T
        if self.alpha:
            s += self.alpha * np.linalg.norm(U, axis=1, keepdims=True) * self.radius[None, :]
        return s

    def _search(self, U: np.ndarray, k: int, budget: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        order, _ = topk_rows(self.probe_scores(U), self.full_budget)
        # at least k vectors per query: probe on past the budget until the clusters hold k rows
        need = np.argmax(np.cumsum(np.diff(self.offsets)[order], axis=1) >= k, axis=1) + 1
        per_q = np.maximum(min(budget, self.full_budget), need)
        width = int(per_q.max())
        probes = np.where(np.arange(width)[None, :] < per_q[:, None], order[:, :width], -1)
        ids, sc, rows = scan_clusters(self.V, self.perm, self.offsets, U, probes, k)
        return ids, sc, rows + self.full_budget, 0.0

    @property
    def full_budget(self) -> int:
        return int(self.centroids.shape[0])

    def default_budget(self) -> int:
        return max(1, self.full_budget // 32)

    def budgets(self, steps: int = 8) -> list[int]:
        ladder = np.unique(np.geomspace(1, self.full_budget, num=max(2, steps)).round().astype(int))
        return [int(b) for b in ladder]

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"V": self.V, "perm": self.perm, "offsets": self.offsets, "centroids": self.centroids,
                "radius": self.radius}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        V, perm, off, C, r = (arrays[k] for k in ("V", "perm", "offsets", "centroids", "radius"))
        n, d = V.shape
        if perm.shape != (n,) or off.shape != (C.shape[0] + 1,) or off[-1] != n or C.shape[1] != d \
                or r.shape != (C.shape[0],) or np.any(np.diff(off) < 0):
            raise ValueError("inconsistent IVF arrays")
        self.V, self.perm, self.offsets, self.centroids, self.radius = V, perm, off, C, r
        self.n, self.d = n, d
