"""IVF: k-means clusters with norm-aware probing (inverted file, Jegou et al. 2011, adapted to inner product).

Build: spherical k-means with inner-product assignment (:mod:`fortify.mips._kmeans`, ``clustering="spherical"``:
unit centroids, each vector to the centroid of its largest inner product, so clusters group directions and a
query's probe order matches how vectors were assigned; ``"l2"``: Lloyd's k-means) of ``V (n, d)`` into ``nlist``
clusters; ``V`` is stored once, permuted so each cluster is contiguous, with each cluster's member mean ``c``
(which carries the members' norms) and radius ``r = max ||v - c||``.
Search: a query ``u`` ranks the clusters by ``<u, c> + alpha ||u|| r`` (``alpha = 1`` is the Cauchy-Schwarz
upper bound on any member's inner product, ``alpha = 0`` the plain centroid score: norm-aware probing, default ``alpha = 0.05``, sits in
between and favours wide clusters of long vectors) and scans the ``budget`` best (``nprobe``) clusters exactly.
Batched cluster-major (:func:`scan_clusters`): each probed cluster's rows meet all the queries that probe it in one
matrix product, the scores land in one per-query buffer and one top-k selection ends the search.
Cost per query: ``nlist + sum of probed cluster sizes`` inner products; ``budget = nlist`` is exact.
Probe sets are nested in the budget, so recall is monotone in it.
"""
from __future__ import annotations

import numpy as np

from fortify.mips._kmeans import group, kmeans
from fortify.errors import ConfigError
from fortify.mips.base import INDEXES, Index, check_option, topk_rows


def scan_clusters(V: np.ndarray, perm: np.ndarray, offsets: np.ndarray, U: np.ndarray, probes: np.ndarray,
                  k: int, max_cells: int = 1 << 23) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-``k`` of each query ``U (q, d)`` over the rows of its probed clusters ``probes (q, p)``
    (``V`` cluster-contiguous, ``perm`` its original ids; ``-1`` = no cluster). Returns ``(ids, scores, rows
    scanned per query)``; ids ``-1`` / scores ``-inf`` pad a row whose clusters hold fewer than ``k`` vectors.

    Batched, cluster-major: each probed cluster's rows meet all the queries that probe it (one matrix product
    for 16 queries or more, one matrix-vector product per query below: OpenBLAS's few-row sgemm is 2-4x slower),
    the scores go into a per-query buffer (each query's probed rows side by side, ``(q, rows)``), and one top-k
    selection per block of queries ends the search (no per-cluster selection). Queries go in blocks whose
    buffers hold at most ``max_cells`` floats."""
    q = probes.shape[0]
    sizes = np.diff(offsets)
    psz = np.where(probes >= 0, sizes[np.maximum(probes, 0)], 0)
    tot = psz.sum(axis=1)
    ids = np.full((q, k), -1, dtype=np.int64)
    sc = np.full((q, k), -np.inf, dtype=np.float32)
    start = 0
    while start < q:
        stop, width = start + 1, max(k, int(tot[start]))
        while stop < q and (stop + 1 - start) * max(width, int(tot[stop])) <= max_cells:
            width, stop = max(width, int(tot[stop])), stop + 1
        blk = slice(start, stop)
        ids[blk], sc[blk] = _scan_block(V, perm, offsets, U[blk], probes[blk], psz[blk], k, width)
        start = stop
    return ids, sc, tot.astype(np.float64)


def _scan_block(V: np.ndarray, perm: np.ndarray, offsets: np.ndarray, U: np.ndarray, probes: np.ndarray,
                psz: np.ndarray, k: int, width: int, gemm_from: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """One block of :func:`scan_clusters`: queries ``U (b, d)``, their probes and probed sizes ``(b, p)``, a
    ``(b, width)`` score buffer; a cluster probed by ``gemm_from`` queries or more meets them in one matrix
    product, fewer in one matrix-vector product each. Returns ``(ids (b, k), scores (b, k))``."""
    b, p = probes.shape
    base = ((np.cumsum(psz, axis=1) - psz) + (np.arange(b) * width)[:, None]).ravel()  # flat start per probe
    buf = np.full(b * width, -np.inf, dtype=np.float32)
    flat = probes.ravel()
    order = np.argsort(flat, kind="stable")
    clusters, starts = np.unique(flat[order], return_index=True)
    ends = np.append(starts[1:], flat.size)
    for c, a, e in zip(clusters.tolist(), starts.tolist(), ends.tolist()):
        lo, hi = (int(offsets[c]), int(offsets[c + 1])) if c >= 0 else (0, 0)
        if hi == lo:
            continue
        who = order[a:e]
        if who.size < gemm_from:  # one matrix-vector product per query (OpenBLAS's few-row sgemm is 2-4x slower)
            Vt = V[lo:hi].T
            for w in who.tolist():
                o = int(base[w])
                buf[o:o + hi - lo] = U[w // p] @ Vt
        else:
            buf[base[who][:, None] + np.arange(hi - lo)] = U[who // p] @ V[lo:hi].T
    kk = min(k, width)
    pos, vals = topk_rows(buf.reshape(b, width), kk)
    g = (pos + (np.arange(b) * width)[:, None]).ravel()
    slot = np.searchsorted(base, g, side="right") - 1  # the probe a buffer position belongs to
    row = offsets[np.maximum(flat[slot], 0)] + (g - base[slot])
    ok = np.isfinite(vals)
    ids = np.full((b, k), -1, dtype=np.int64)
    sc = np.full((b, k), -np.inf, dtype=np.float32)
    ids[:, :kk] = np.where(ok, perm[np.clip(row, 0, perm.size - 1)].reshape(b, kk), -1)
    sc[:, :kk] = vals
    return ids, sc


def probe_order(scores: np.ndarray, sizes: np.ndarray, budget: int, k: int) -> np.ndarray:
    """The ``budget`` best clusters of each query by ``scores (q, nlist)``, best first, ``(q, p)``; a query whose
    probed clusters hold fewer than ``k`` rows probes on in order until they do (``-1`` pads the others).
    Selects ``budget`` per query (a full sort only for the rare short rows)."""
    q, nl = scores.shape
    w = min(budget, nl)
    order, _ = topk_rows(scores, w)
    short = np.flatnonzero(sizes[order].sum(axis=1) < k)
    if short.size == 0:
        return order
    full, _ = topk_rows(scores[short], nl)
    need = np.maximum(np.argmax(np.cumsum(sizes[full], axis=1) >= k, axis=1) + 1, w)
    width = int(need.max())
    out = np.full((q, width), -1, dtype=np.int64)
    out[:, :w] = order
    out[short] = np.where(np.arange(width)[None, :] < need[:, None], full[:, :width], -1)
    return out


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
        probes = probe_order(self.probe_scores(U), np.diff(self.offsets), budget, k)
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
