"""A proximity-graph index for inner product that stays navigable on unnormalised data (ip-NSW, Morozov &
Babenko 2018, "Non-metric similarity graphs for maximum inner product search"; with the angular guide graph of
ip-NSW+, Liu et al. 2020, "Understanding and improving proximity graph based MIPS").

Known trap: a graph whose edges are chosen by inner product alone funnels every search towards a few long
vectors (hubs) and strands the rest; a graph built on normalised directions alone ignores the norms that decide
MIPS. Each node here gets ``angular`` edges to its nearest neighbours by cosine (navigability) and ``ip`` edges to
its largest inner products (the ip-NSW edges that climb towards long vectors), deduplicated.
Build (IVF-assisted kNN graph, no quadratic pass): k-means of the unit directions into ``sqrt(n)`` clusters;
each cluster's members are compared with the members of its ``build_probe`` angularly nearest clusters (two
matrix products per cluster). Cost ``~ n * build_probe * sqrt(n) * d`` multiply-adds.
Search: for all queries at once, a beam search (``ef = budget``) seeded with the best per-cluster entry points
(the longest member of every cluster, ``sqrt(n)`` inner products), expanding ``width`` best unexpanded pool
members per step, visited sets as per-query bitmaps, until every pool member is expanded.
Cost per query: the inner products of every visited node plus the entry points (measured). ``budget >= n`` is an
exact scan (the guarantee of recall 1.0; beam searches have none).
"""
from __future__ import annotations

import numpy as np

from fortify.mips._kmeans import group, kmeans
from fortify.mips.base import INDEXES, Index, check_option, topk_rows
from fortify.mips.exact import exact_topk


def _row_unique(G: np.ndarray) -> np.ndarray:
    """Rows of ``G (n, R)`` with repeated ids replaced by -1 (kept left of the repeats)."""
    s = np.sort(G, axis=1)
    dup = np.zeros_like(s, dtype=bool)
    dup[:, 1:] = s[:, 1:] == s[:, :-1]
    s[dup] = -1
    return s


def _reverse(G: np.ndarray, cap: int) -> np.ndarray:
    """In-edges of every node of ``G (n, R)`` (-1 = none), at most ``cap`` per node: ``(n, cap)``; they make
    every node reachable from the nodes it points to (the bidirectional links of NSW)."""
    n, R = G.shape
    src = np.repeat(np.arange(n), R)
    dst = G.ravel()
    keep = dst >= 0
    src, dst = src[keep], dst[keep]
    order = np.argsort(dst, kind="stable")
    src, dst = src[order], dst[order]
    start = np.searchsorted(dst, np.arange(n))
    rank = np.arange(dst.size) - start[dst]
    out = np.full((n, cap), -1, dtype=np.int64)
    sel = rank < cap
    out[dst[sel], rank[sel]] = src[sel]
    return out


@INDEXES.register("graph", help="ip-NSW style graph, angular + inner-product edges, batched beam search (budget: ef)")
class GraphIndex(Index):
    """Proximity graph over ``V (n, d)``: ``angular`` + ``ip`` edges per node plus up to ``reverse`` in-edges,
    ``build_probe`` clusters compared per cluster at build, ``max(width, ef / 32)`` expansions per search step,
    ``seed`` of the k-means."""

    def __init__(self, angular: int = 8, ip: int = 32, reverse: int = 24, build_probe: int = 4, width: int = 2,
                 seed: int = 0) -> None:
        super().__init__()
        for name, v in (("angular", angular), ("build_probe", build_probe), ("width", width)):
            check_option(v, name)
        check_option(ip, "ip", minimum=0)
        check_option(reverse, "reverse", minimum=0)
        self.angular, self.ip, self.reverse, self.build_probe, self.width, self.seed = int(angular), int(ip), \
            int(reverse), int(build_probe), int(width), int(seed)
        self.V = np.empty((0, 0), dtype=np.float32)
        self.edges = np.empty((0, 0), dtype=np.int32)
        self.entries = np.empty(0, dtype=np.int64)

    def _fit(self, V: np.ndarray) -> None:
        self.V = V
        n = V.shape[0]
        norms = np.linalg.norm(V, axis=1)
        X = V / np.maximum(norms, 1e-30)[:, None]
        nl = max(1, int(round(np.sqrt(n))))
        C, lab = kmeans(X, nl, iters=8, seed=self.seed)
        perm, off = group(lab, C.shape[0])
        near, _ = topk_rows(C @ C.T, min(self.build_probe, C.shape[0]))
        ra, ri = min(self.angular, n - 1), min(self.ip, n - 1)
        edges = np.full((n, ra + ri), -1, dtype=np.int64)
        for c in range(C.shape[0]):
            mem = perm[off[c]:off[c + 1]]
            if mem.size == 0:
                continue
            cand = np.concatenate([perm[off[o]:off[o + 1]] for o in near[c]])
            if ra:
                s = X[mem] @ X[cand].T
                s[mem[:, None] == cand[None, :]] = -np.inf
                pos, vals = topk_rows(s, min(ra, cand.size))
                edges[mem, :pos.shape[1]] = np.where(np.isfinite(vals), cand[pos], -1)
            if ri:
                s = V[mem] @ V[cand].T
                s[mem[:, None] == cand[None, :]] = -np.inf
                pos, vals = topk_rows(s, min(ri, cand.size))
                edges[mem, ra:ra + pos.shape[1]] = np.where(np.isfinite(vals), cand[pos], -1)
        self.edges = _row_unique(np.hstack([edges, _reverse(edges, self.reverse)])).astype(np.int32)
        ent = []
        for c in range(C.shape[0]):
            mem = perm[off[c]:off[c + 1]]
            if mem.size:
                ent.append(mem[np.argmax(norms[mem])])
        self.entries = np.asarray(ent, dtype=np.int64)

    def _beam(self, U: np.ndarray, k: int, ef: int,
              seeds: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Batched beam search of ``U (q, d)`` with pool size ``ef``; returns ids, scores and inner products.
        ``seeds``: ``(ids (q, s), exact scores (q, s))`` to start from (-1 pads) instead of the entry points."""
        q = U.shape[0]
        if seeds is None:
            cand_id = np.broadcast_to(self.entries, (q, self.entries.size))
            cand_sc = U @ self.V[self.entries].T
            ips = np.full(q, float(self.entries.size))
        else:
            cand_id, cand_sc = seeds
            ips = np.zeros(q)
        e = min(ef, cand_id.shape[1])
        pos, sc0 = topk_rows(np.where(cand_id >= 0, cand_sc, -np.inf).astype(np.float32), e)
        pool_id = np.full((q, ef), -1, dtype=np.int64)
        pool_sc = np.full((q, ef), -np.inf, dtype=np.float32)
        pool_id[:, :e] = np.where(np.isfinite(sc0), np.take_along_axis(cand_id, pos, axis=1), -1)
        pool_sc[:, :e] = sc0
        done = ~np.isfinite(pool_sc)
        vis = np.zeros((q, (self.n + 7) // 8), dtype=np.uint8)
        r0, c0 = np.nonzero(pool_id >= 0)
        np.bitwise_or.at(vis, (r0, pool_id[r0, c0] >> 3), (1 << (pool_id[r0, c0] & 7)).astype(np.uint8))
        active = np.arange(q)
        while active.size:
            pick_sc = np.where(done[active], -np.inf, pool_sc[active])
            w = min(max(self.width, ef // 32), ef)
            ppos, psc = topk_rows(pick_sc, w) if w < ef else (np.argsort(-pick_sc, axis=1), None)
            ok = np.isfinite(np.take_along_axis(pick_sc, ppos, axis=1))
            done[active[:, None], ppos] |= ok
            nodes = np.where(ok, np.take_along_axis(pool_id[active], ppos, axis=1), -1)
            nb = np.where(nodes[:, :, None] >= 0, self.edges[np.maximum(nodes, 0)], -1).reshape(active.size, -1)
            valid = nb >= 0
            nbc = np.maximum(nb, 0)
            seen = (vis[active[:, None], nbc >> 3] >> (nbc & 7).astype(np.uint8)) & 1
            valid &= seen == 0
            # the same id can appear under two expanded nodes of one row: keep its first occurrence
            srt = np.sort(np.where(valid, nb, -1), axis=1)
            first = np.ones_like(srt, dtype=bool)
            first[:, 1:] = srt[:, 1:] != srt[:, :-1]
            nb = np.where(first & (srt >= 0), srt, -1)
            valid = nb >= 0
            r, c = np.nonzero(valid)
            np.bitwise_or.at(vis, (active[r], nb[r, c] >> 3), (1 << (nb[r, c] & 7)).astype(np.uint8))
            s = np.full(nb.shape, -np.inf, dtype=np.float32)
            s[r, c] = np.einsum("ij,ij->i", self.V[nb[r, c]], U[active[r]])
            ips[active] += valid.sum(axis=1)
            worst = pool_sc[active].min(axis=1)
            gain = (s > worst[:, None]).any(axis=1)  # rows where a new node enters the pool
            g, sg = active[gain], s[gain]
            if g.size:
                all_sc = np.concatenate([pool_sc[g], sg], axis=1)
                all_id = np.concatenate([pool_id[g], nb[gain]], axis=1)
                all_done = np.concatenate([done[g], ~valid[gain]], axis=1)
                keep = np.argpartition(-all_sc, ef - 1, axis=1)[:, :ef]
                pool_sc[g] = np.take_along_axis(all_sc, keep, axis=1)
                pool_id[g] = np.take_along_axis(all_id, keep, axis=1)
                done[g] = np.take_along_axis(all_done, keep, axis=1) | ~np.isfinite(pool_sc[g])
            active = active[~done[active].all(axis=1)]
        pos, sc = topk_rows(pool_sc, k)
        return np.take_along_axis(pool_id, pos, axis=1), sc, ips

    def search_from(self, U: np.ndarray, k: int, budget: int,
                    seeds: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Beam search of validated ``U (q, d)`` started from ``seeds`` (ids, exact scores; e.g. an IVF probe's
        top-k, reused by the selector); returns ids, scores and the inner products spent here per query."""
        return self._beam(U, k, max(budget, k), seeds)

    def _search(self, U: np.ndarray, k: int, budget: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        if budget >= self.n:
            ids, sc = exact_topk(self.V, U, k)
            return ids, sc, np.full(U.shape[0], float(self.n)), 0.0
        ef = max(budget, k)
        out_i, out_s, out_c = [], [], []
        step = max(1, int(2 ** 28 // max(1, self.n)))  # visited bitmaps <= 32 MB per block
        for s in range(0, U.shape[0], step):
            a, b, c = self._beam(U[s:s + step], k, ef)
            out_i.append(a)
            out_s.append(b)
            out_c.append(c)
        return np.concatenate(out_i), np.concatenate(out_s), np.concatenate(out_c), 0.0

    def default_budget(self) -> int:
        return min(self.n, 64)

    def budgets(self, steps: int = 8) -> list[int]:
        ladder = np.geomspace(10, max(10, min(self.n - 1, 1024)), num=max(2, steps - 1)).round().astype(int)
        return [int(b) for b in np.unique(np.minimum(ladder, self.n))] + ([self.n] if self.n > ladder.max() else [])

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"V": self.V, "edges": self.edges, "entries": self.entries}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        V, E, ent = arrays["V"], arrays["edges"], arrays["entries"]
        n, d = V.shape
        if E.ndim != 2 or E.shape[0] != n or (E.size and E.max() >= n) or ent.ndim != 1 or ent.size == 0 \
                or ent.min() < 0 or ent.max() >= n:
            raise ValueError("inconsistent graph arrays")
        self.V, self.edges, self.entries = V, E, ent
        self.n, self.d = n, d
