"""k-means (Lloyd) on a sample, then assignment of every row: the coarse quantiser of IVF, the graph
build and the selector's features. Cost: ``iters * train * nlist * d`` multiply-adds for training plus
``n * nlist * d`` for the assignment, in blocks (memory ``O(block * nlist)``)."""
from __future__ import annotations

import numpy as np


def assign(X: np.ndarray, C: np.ndarray, block: int = 16384, *, metric: str = "l2") -> np.ndarray:
    """Nearest centroid of each row of ``X (m, d)`` among ``C (c, d)``: ``(m,)`` int64; ``metric="ip"``: the
    centroid of largest inner product (the assignment that matches probing by inner product)."""
    half = 0.5 * (C * C).sum(axis=1) if metric == "l2" else np.zeros(C.shape[0], dtype=C.dtype)
    out = np.empty(X.shape[0], dtype=np.int64)
    for s in range(0, X.shape[0], block):
        out[s:s + block] = np.argmax(X[s:s + block] @ C.T - half, axis=1)
    return out


def kmeans(X: np.ndarray, nlist: int, *, iters: int = 10, train_size: int = 65536, seed: int = 0,
           metric: str = "l2", spherical: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on ``min(train_size, m)`` sampled rows of ``X (m, d)``; returns ``(centroids (nlist, d),
    labels (m,))`` with every row assigned. Empty clusters are re-seeded from the largest cluster's rows.
    ``metric="ip"`` assigns by largest inner product; ``spherical`` renormalises centroids to unit norm."""
    rng = np.random.default_rng(seed)
    m = X.shape[0]
    nlist = max(1, min(nlist, m))
    sample = X[rng.choice(m, size=min(m, max(train_size, nlist)), replace=False)]
    C = sample[rng.choice(sample.shape[0], size=nlist, replace=False)].copy()
    for _ in range(iters):
        lab = assign(sample, C, metric=metric)
        counts = np.bincount(lab, minlength=nlist)
        order = np.argsort(lab, kind="stable")
        nz = counts > 0
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[nz]
        sums = np.add.reduceat(sample[order].astype(np.float64), starts, axis=0)
        C[nz] = (sums / counts[nz, None]).astype(np.float32)
        empty = np.flatnonzero(~nz)
        if empty.size:
            big = np.flatnonzero(lab == np.argmax(counts))
            C[empty] = sample[rng.choice(big, size=empty.size, replace=big.size < empty.size)] \
                + 1e-3 * rng.standard_normal((empty.size, X.shape[1])).astype(np.float32)
        if spherical:
            C /= np.maximum(np.linalg.norm(C, axis=1, keepdims=True), 1e-30)
    return C.astype(np.float32), assign(X, C, metric=metric)


def group(labels: np.ndarray, nlist: int) -> tuple[np.ndarray, np.ndarray]:
    """``(perm (m,), offsets (nlist + 1,))``: rows sorted by label (stable); cluster ``c`` is
    ``perm[offsets[c]:offsets[c + 1]]``."""
    perm = np.argsort(labels, kind="stable")
    offsets = np.zeros(nlist + 1, dtype=np.int64)
    np.cumsum(np.bincount(labels, minlength=nlist), out=offsets[1:])
    return perm.astype(np.int64), offsets
