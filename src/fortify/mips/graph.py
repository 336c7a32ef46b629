"""A proximity-graph index for inner product that stays navigable on unnormalised, clustered data (ip-NSW,
Morozov & Babenko 2018, "Non-metric similarity graphs for maximum inner product search"; the angular guide graph
of ip-NSW+, Liu et al. 2020; HNSW's entry layer, Malkov & Yashunin 2018, replaced by a two-level centroid router).

Known traps: a graph whose edges are chosen by inner product alone funnels every search towards a few long
vectors (hubs) and strands the rest; a graph built on normalised directions alone ignores the norms that decide
MIPS; a kNN graph of well-separated clusters falls apart into one component per cluster, so fixed entry points
strand every query whose cluster holds none (the old version: recall@10 0.63 on 1,000 clusters at any ef).
Each node here gets ``angular`` edges to its nearest neighbours by cosine (navigability) and ``ip`` edges to
its largest inner products (the ip-NSW edges that climb towards long vectors), plus ``reps`` edges to its own
cluster's representatives and one representative of each of its ``build_probe - 1`` nearest clusters (long edges
that join the components), deduplicated, plus up to ``reverse`` in-edges.
Build (IVF-assisted kNN graph, no quadratic pass): k-means of the unit directions into ``sqrt(n)`` clusters;
each cluster's members are compared with the members of its ``build_probe`` angularly nearest clusters (two
matrix products per cluster). Each cluster keeps ``reps`` representatives: its longest member (ip-NSW's entry
points are long vectors) and then farthest-point samples of the directions (so a cluster that merges two groups of
points has one in each). Each cluster has a router key (``router``): ``"centroid"``, its unit centroid direction
times its longest member's norm (a merged cluster stays findable from both groups), or ``"member"``, the longest
member itself (its score is a seed's, free); ``None`` picks at build whichever puts sampled rows' own clusters among
the ``entry`` best keys (within 0.01: member); both benchmark sets pick centroid. The unit centroids are clustered
again into ``sqrt(nlist)`` super-centroids; ``route`` is calibrated at build (the smallest number of
super-centroids whose clusters hold the best key of 99% of 2,000 sampled rows, or 0 = score every key when none
under half of them does: unstructured centroids, the common case). Cost ``~ n * build_probe * sqrt(n) * d``.
Search (per-query entry points instead of fixed ones): score the keys (all ``sqrt(n)`` of them, or those of the
``route`` best super-centroids); seeds = the longest members of the ``entry`` best clusters plus every other
representative of the best quarter of them (``entry * (1 + (reps - 1) / 4)`` inner products); then, for all
queries at once, a beam search (``ef = budget``) from the seeds expanding ``max(width, ef / 32)`` best unexpanded
pool members per step, visited sets as per-query bitmaps, until every pool member is expanded.
Cost per query: the inner products of the router, the seeds and every visited node (measured). ``budget >= n`` is
an exact scan (the guarantee of recall 1.0; beam searches have none).
"""
from __future__ import annotations

import numpy as np
import torch

from fortify.errors import ConfigError
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


def _spread(X: np.ndarray, mem: np.ndarray, norms: np.ndarray, r: int) -> np.ndarray:
    """``r`` members of ``mem`` spread over the unit directions ``X[mem] (m, d)``: the longest (``norms (m,)``:
    the entry point of ip-NSW, where inner-product searches end up), then farthest-point sampling (cosine).
    Returns ``(min(r, m),)`` ids."""
    Y = X[mem]
    pick = [int(np.argmax(norms))]
    best = Y @ Y[pick[0]]
    for _ in range(min(r, mem.size) - 1):
        j = int(np.argmin(best))
        pick.append(j)
        best = np.maximum(best, Y @ Y[j])
    return mem[np.asarray(pick)]


def _padded(perm: np.ndarray, off: np.ndarray) -> np.ndarray:
    """The groups ``perm[off[g]:off[g + 1]]`` as rows of a ``(groups, largest)`` array padded with -1."""
    sizes = np.diff(off)
    out = np.full((sizes.size, max(1, int(sizes.max()))), -1, dtype=np.int64)
    for g in range(sizes.size):
        out[g, :sizes[g]] = perm[off[g]:off[g + 1]]
    return out


@INDEXES.register("graph", help="ip-NSW style graph, angular + inner-product + cluster-link edges, per-query entry "
                                "points from a centroid router, batched beam search (budget: ef)")
class GraphIndex(Index):
    """Proximity graph over ``V (n, d)``: ``angular`` + ``ip`` edges per node, ``reps`` representatives per
    cluster (linked from every member and from the nearest clusters), up to ``reverse`` in-edges, ``build_probe``
    clusters compared per cluster at build; search seeds from the ``entry`` best clusters among the ``route``
    best super-centroids' (0: all; None: calibrated at build), ``max(width, ef / 32)`` expansions per step;
    ``seed`` of the k-means."""

    def __init__(self, angular: int = 8, ip: int = 32, reverse: int = 24, build_probe: int = 4, width: int = 2,
                 reps: int = 4, entry: int = 8, route: int | None = None, router: str | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        for name, v in (("angular", angular), ("build_probe", build_probe), ("width", width), ("reps", reps),
                        ("entry", entry)):
            check_option(v, name)
        for name, v in (("ip", ip), ("reverse", reverse)):
            check_option(v, name, minimum=0)
        if route is not None:
            check_option(route, "route", minimum=0)
        self.angular, self.ip, self.reverse, self.build_probe, self.width, self.seed = int(angular), int(ip), \
            int(reverse), int(build_probe), int(width), int(seed)
        self.reps, self.entry = int(reps), int(entry)
        self.route: int | None = None if route is None else int(route)
        if router not in (None, "member", "centroid"):
            raise ConfigError(f"router must be 'member', 'centroid' or None (chosen at build), got {router!r}")
        self.router: str | None = router
        self.V = np.empty((0, 0), dtype=np.float32)
        self.edges = np.empty((0, 0), dtype=np.int32)
        self.members = np.empty((0, 0), dtype=np.int64)  # (nlist, reps) representatives, -1 pads
        self.keys = np.empty((0, 0), dtype=np.float32)  # (nlist, d) router keys
        self.supers = np.empty((0, 0), dtype=np.float32)  # (nsuper, d) unit directions
        self.lists = np.empty((0, 0), dtype=np.int64)  # (nsuper, largest) centroid ids, -1 pads

    def _fit(self, V: np.ndarray) -> None:
        self.V = V
        n = V.shape[0]
        norms = np.linalg.norm(V, axis=1)
        X = V / np.maximum(norms, 1e-30)[:, None]
        nl = max(1, int(round(np.sqrt(n))))
        C, lab = kmeans(X, nl, iters=8, seed=self.seed)
        nl = C.shape[0]
        perm, off = group(lab, nl)
        near, _ = topk_rows(C @ C.T, min(self.build_probe, nl))
        ra, ri = min(self.angular, n - 1), min(self.ip, n - 1)
        edges = np.full((n, ra + ri + self.reps + near.shape[1] - 1), -1, dtype=np.int64)
        Cu = C / np.maximum(np.linalg.norm(C, axis=1, keepdims=True), 1e-30)
        reps = np.full((nl, self.reps), -1, dtype=np.int64)
        for c in range(nl):
            mem = perm[off[c]:off[c + 1]]
            if mem.size:
                r = _spread(X, mem, norms[mem], self.reps)
                reps[c, :r.size] = r
        for c in range(nl):
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
            # long edges: the own cluster's representatives and one of each near cluster's (rotated by member)
            edges[mem, ra + ri:ra + ri + self.reps] = np.where(reps[c] == mem[:, None], -1, reps[c][None, :])
            for j, o in enumerate(near[c][1:]):
                edges[mem, ra + ri + self.reps + j] = reps[o][np.arange(mem.size) % self.reps]
        edges[edges == np.arange(n)[:, None]] = -1
        self.edges = _row_unique(np.hstack([edges, _reverse(edges, self.reverse)])).astype(np.int32)
        self.members = reps
        sample = np.random.default_rng(self.seed).choice(n, min(n, 2000), replace=False)
        if self.router is None:  # the member keys when they route as well as the centroid keys (they are free)
            hits = {kind: self._hit(self._make_keys(kind, Cu), X[sample], lab[sample])
                    for kind in ("member", "centroid")}
            self.router = "member" if hits["member"] >= hits["centroid"] - 0.01 else "centroid"
        self.keys = self._make_keys(self.router, Cu)
        ns = max(1, int(round(np.sqrt(nl))))
        S, slab = kmeans(Cu, ns, iters=10, seed=self.seed, metric="ip", spherical=True)
        sperm, soff = group(slab, S.shape[0])
        self.supers, self.lists = S.astype(np.float32), _padded(sperm, soff)
        if self.route is None:
            self.route = self._calibrate(X[sample])

    def _make_keys(self, kind: str, Cu: np.ndarray) -> np.ndarray:
        """Router keys ``(nlist, d)``: ``"member"``, each cluster's longest member (scoring it is scoring a seed,
        as ip-NSW's entry points); ``"centroid"``, its unit centroid direction times that member's norm (a cluster
        that merges two separated groups lies between them and stays findable from both)."""
        lead = self.V[self.members[:, 0]]
        return lead.copy() if kind == "member" else (Cu * np.linalg.norm(lead, axis=1)[:, None]).astype(np.float32)

    def _hit(self, keys: np.ndarray, Q: np.ndarray, own: np.ndarray) -> float:
        """Fraction of sample rows ``Q (m, d)`` whose own cluster ``own (m,)`` is among the ``entry`` best keys."""
        top, _ = topk_rows(Q @ keys.T, min(self.entry, keys.shape[0]))
        return float((top == own[:, None]).any(axis=1).mean())

    def _calibrate(self, Q: np.ndarray, hit: float = 0.99) -> int:
        """The smallest ``route`` whose routed centroids contain the flat scan's best centroid for ``hit`` of the
        sample queries ``Q (m, d)`` (0: every centroid, when no smaller one does); the router is only as coarse
        as the data allows (well-separated clusters need a wide route, clustered directions a narrow one)."""
        ns = self.supers.shape[0]
        best = np.argmax(Q @ self._keys().T, axis=1)
        order, _ = topk_rows(Q @ self.supers.T, ns)
        where = np.argmax((self.lists[order] == best[:, None, None]).any(axis=2), axis=1)  # rank of its group
        for r in range(1, ns):
            if (where < r).mean() >= hit and r * self.lists.shape[1] < 0.5 * self.members.shape[0]:
                return r
        return 0

    def _keys(self) -> np.ndarray:
        """The router's keys ``(nlist, d)`` (see :meth:`_make_keys`; ``keys``, chosen at build by :meth:`_hit`)."""
        return self.keys

    def entry_points(self, U: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per-query entry points of validated ``U (q, d)``: ``(seed ids (q, s), their exact scores (q, s),
        router scores (q, m) of the keys scored (-inf pads; the best ``max(entry, 10)`` first, sorted, then the
        others unsorted), inner products per query (q,))``.
        Seeds: the longest members of the ``entry`` best-scoring clusters and every representative of the best
        quarter of them. The router scores are the selector's features; the seeds start :meth:`search_from`."""
        q = U.shape[0]
        keys = self._keys()
        if self.route and self.route < self.supers.shape[0]:
            top, _ = topk_rows(U @ self.supers.T, self.route)
            cid = self.lists[top].reshape(q, -1)
            ok = cid >= 0
            cs = np.where(ok, np.einsum("qmd,qd->qm", keys[np.maximum(cid, 0)], U), -np.inf)
            ips = self.supers.shape[0] + ok.sum(axis=1).astype(np.float64)
        else:
            cid = np.broadcast_to(np.arange(keys.shape[0]), (q, keys.shape[0]))
            cs = U @ keys.T
            ips = np.full(q, float(keys.shape[0]))
        e = min(self.entry, cs.shape[1])
        cs = cs.astype(np.float32)
        pos, csort = topk_rows(cs, min(max(e, 10), cs.shape[1]))  # the best sorted, the rest as they come
        if pos.shape[1] < cs.shape[1]:
            rest = np.ones(cs.shape, dtype=bool)
            np.put_along_axis(rest, pos, False, axis=1)
            csort = np.concatenate([csort, cs[rest].reshape(q, -1)], axis=1)
        best = np.where(np.isfinite(csort[:, :e]), np.take_along_axis(cid, pos[:, :e], axis=1), -1)
        rep = np.where(best[:, :, None] >= 0, self.members[np.maximum(best, 0)], -1)
        seeds = np.concatenate([rep[:, :, 0], rep[:, :max(1, e // 4), 1:].reshape(q, -1)], axis=1)
        ok = seeds >= 0
        ss = np.where(ok, np.einsum("qmd,qd->qm", self.V[np.maximum(seeds, 0)], U), -np.inf).astype(np.float32)
        free = ok[:, :e].sum(axis=1) if self.router == "member" else 0  # the keys' scores are the seeds'
        return seeds, ss, csort, ips + ok.sum(axis=1) - free

    def _beam(self, U: np.ndarray, k: int, ef: int,
              seeds: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Batched beam search of ``U (q, d)`` with pool size ``ef``; returns ids, scores and inner products.
        ``seeds``: ``(ids (q, s), exact scores (q, s))`` to start from (-1 pads) instead of the entry points."""
        q = U.shape[0]
        if seeds is None:
            cand_id, cand_sc, _, ips = self.entry_points(U)
        else:
            cand_id, cand_sc = seeds
            ips = np.zeros(q)
        # the same seed can be a representative of two entry centroids: keep one
        srt = np.argsort(cand_id, axis=1, kind="stable")
        sid = np.take_along_axis(cand_id, srt, axis=1)
        dup = np.zeros_like(sid, dtype=bool)
        dup[:, 1:] = sid[:, 1:] == sid[:, :-1]
        cand_id = np.where(dup | (sid < 0), -1, sid)
        cand_sc = np.where(cand_id >= 0, np.take_along_axis(cand_sc, srt, axis=1), -np.inf)
        e = min(ef, cand_id.shape[1])
        pos, sc0 = topk_rows(cand_sc.astype(np.float32), e)
        pool_id = np.full((q, ef), -1, dtype=np.int64)
        pool_sc = np.full((q, ef), -np.inf, dtype=np.float32)
        pool_id[:, :e] = np.where(np.isfinite(sc0), np.take_along_axis(cand_id, pos, axis=1), -1)
        pool_sc[:, :e] = sc0
        done = ~np.isfinite(pool_sc)
        nbytes = (self.n + 7) // 8
        vis = np.zeros(q * nbytes, dtype=np.uint8)  # flat (q, nbytes): 1-D gathers and ufunc.at are the fast ones
        r0, c0 = np.nonzero(cand_id >= 0)
        np.bitwise_or.at(vis, r0 * nbytes + (cand_id[r0, c0] >> 3), (1 << (cand_id[r0, c0] & 7)).astype(np.uint8))
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
            seen = (np.take(vis, (active * nbytes)[:, None] + (nbc >> 3)) >> (nbc & 7).astype(np.uint8)) & 1
            valid &= seen == 0
            # the same id can appear under two expanded nodes of one row: keep its first occurrence
            srt = np.sort(np.where(valid, nb, -1), axis=1)
            first = np.ones_like(srt, dtype=bool)
            first[:, 1:] = srt[:, 1:] != srt[:, :-1]
            nb = np.where(first & (srt >= 0), srt, -1)
            valid = nb >= 0
            cnt = valid.sum(axis=1)
            new = nb[valid]  # row-major: row i's new ids, then row i + 1's
            np.bitwise_or.at(vis, np.repeat(active * nbytes, cnt) + (new >> 3), (1 << (new & 7)).astype(np.uint8))
            s = np.full(nb.shape, -np.inf, dtype=np.float32)
            s[valid] = np.einsum("ij,ij->i", np.take(self.V, new, axis=0), np.repeat(U[active], cnt, axis=0))
            ips[active] += cnt
            worst = pool_sc[active].min(axis=1)
            gain = (s > worst[:, None]).any(axis=1)  # rows where a new node enters the pool
            g, sg = active[gain], s[gain]
            if g.size:
                all_sc = np.concatenate([pool_sc[g], sg], axis=1)
                all_id = np.concatenate([pool_id[g], nb[gain]], axis=1)
                all_done = np.concatenate([done[g], ~valid[gain]], axis=1)
                keep = torch.topk(torch.from_numpy(all_sc), ef, dim=1, sorted=False).indices.numpy()
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
        return {"V": self.V, "edges": self.edges, "members": self.members, "keys": self.keys, "supers": self.supers,
                "lists": self.lists}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        V, E, M, K, S, L = (arrays[k] for k in ("V", "edges", "members", "keys", "supers", "lists"))
        n, d = V.shape
        if E.ndim != 2 or E.shape[0] != n or (E.size and E.max() >= n) or M.ndim != 2 or M.size == 0 \
                or M[:, 0].min() < 0 or M.max() >= n or S.ndim != 2 or S.shape[1] != d or L.shape[0] != S.shape[0] \
                or L.max() >= M.shape[0] or K.shape != (M.shape[0], d):
            raise ValueError("inconsistent graph arrays")
        self.V, self.edges, self.members, self.keys, self.supers, self.lists = V, E, M, K, S, L
        self.n, self.d = n, d
