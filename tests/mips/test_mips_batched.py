"""The batched search paths of fortify.mips against per-query references: the IVF's cluster-major scan (one
score buffer, one top-k per block of queries) equals an exact rerank of each query's probed rows on its own,
whatever the block size; ``topk_rows`` (torch.topk / introsort) equals a stable argsort, ties included."""
from __future__ import annotations

import numpy as np
import pytest

from fortify.mips import recall_at_k
from fortify.mips.base import rerank, topk_rows
from fortify.mips.ivf import IVFIndex, probe_order, scan_clusters


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("k", [1, 5, 30])
def test_topk_rows_equals_stable_argsort_with_ties(dtype: type, k: int) -> None:
    rng = np.random.default_rng(1)
    S: np.ndarray = rng.integers(-4, 5, size=(50, 30)).astype(dtype)  # many ties
    S[0] = 0  # one row all tied
    if dtype is not np.int64:
        S[1, ::3] = -np.inf
    pos, vals = topk_rows(S, k)
    ref = np.argsort(-S, axis=1, kind="stable")[:, :k]
    assert np.array_equal(pos, ref)
    assert np.array_equal(vals, np.take_along_axis(S, ref, axis=1))


def _per_query(V: np.ndarray, perm: np.ndarray, off: np.ndarray, U: np.ndarray, probes: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference: each query alone, the exact top-k of its probed clusters' rows (original ids)."""
    ids, sc, rows = [], [], []
    for u, pr in zip(U, probes):
        cand = np.concatenate([np.arange(off[c], off[c + 1]) for c in pr if c >= 0] or [np.empty(0, np.int64)])
        i, s = rerank(V, u, cand.astype(np.int64), k)
        ids.append(np.where(i >= 0, perm[np.maximum(i, 0)], -1))
        sc.append(s)
        rows.append(cand.size)
    return np.stack(ids), np.stack(sc), np.asarray(rows, dtype=np.float64)


@pytest.mark.parametrize("max_cells", [1 << 23, 50])
def test_scan_clusters_equals_per_query_rerank(max_cells: int) -> None:
    rng = np.random.default_rng(2)
    sizes = rng.integers(0, 9, size=12)  # empty clusters and clusters smaller than k
    off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n, d, q, p, k = int(off[-1]), 8, 30, 4, 6
    V = rng.standard_normal((n, d)).astype(np.float32)
    perm = rng.permutation(n).astype(np.int64)
    U = rng.standard_normal((q, d)).astype(np.float32)
    probes = np.stack([rng.choice(12, size=p, replace=False) for _ in range(q)])
    probes[::5, 2:] = -1  # fewer probes for some queries
    probes[3] = -1  # a query probing nothing
    ids, sc, rows = scan_clusters(V, perm, off, U, probes, k, max_cells=max_cells)
    rid, rsc, rrows = _per_query(V, perm, off, U, probes, k)
    assert np.array_equal(rows, rrows)
    assert np.allclose(sc, rsc, rtol=1e-5, atol=1e-5)
    fin = np.isfinite(rsc)
    assert np.array_equal(ids[fin], rid[fin]) and (ids[~fin] == -1).all()


def test_ivf_search_equals_per_query_path(data: tuple[np.ndarray, np.ndarray]) -> None:
    V, U = data
    idx = IVFIndex.build(V, nlist=40)
    sizes = np.diff(idx.offsets)
    for b in (1, 3, 40):
        res = idx.search(U, 10, b)
        probes = probe_order(idx.probe_scores(U), sizes, b, 10)
        assert (sizes[np.maximum(probes, 0)] * (probes >= 0)).sum(axis=1).min() >= 10  # >= k rows per query
        full = np.argsort(-idx.probe_scores(U), axis=1, kind="stable")[:, :b]
        assert np.array_equal(probes[:, :b], full)  # the budget's best clusters, best first
        rid, rsc, rrows = _per_query(idx.V, idx.perm, idx.offsets, U, probes, 10)
        assert np.array_equal(res.ids, rid) and np.allclose(res.scores, rsc, rtol=1e-5, atol=1e-5)
        assert np.array_equal(res.cost.per_query, rrows + idx.full_budget)
    exact = np.argsort(-(U.astype(np.float64) @ V.T.astype(np.float64)), axis=1)[:, :10]
    assert recall_at_k(idx.search(U, 10, idx.full_budget).ids, exact).mean() == 1.0


def test_cheapest_mix_is_the_lower_hull_at_the_target() -> None:
    from fortify.mips.selector import _cheapest_mix

    rec, cost = np.array([0.5, 0.8, 1.0]), np.array([1.0, 2.0, 10.0])
    i, j, f = _cheapest_mix(rec, cost, 0.9)  # type: ignore[misc]
    assert (i, j) == (1, 2) and f == pytest.approx(0.5)  # 0.5 * 0.8 + 0.5 * 1.0 = 0.9 at cost 6 (< 8.2, 10)
    one = _cheapest_mix(rec, cost, 0.8)
    assert one is not None and one[1] == 1 and one[2] == 0.0  # configuration 1 alone reaches 0.8 at cost 2
    assert _cheapest_mix(rec, cost, 1.01) is None


def test_budget_rule_trades_recall_for_cost_on_average(data: tuple[np.ndarray, np.ndarray]) -> None:
    """The Lagrangian rule: price 0 picks each query's best predicted configuration, a huge price the cheapest;
    the calibrated price keeps the out-of-fold mean recall at the target; a bad rule name is a ConfigError."""
    from fortify.errors import ConfigError
    from fortify.mips import build
    from fortify.mips.selector import Selector

    V, _ = data
    rng = np.random.default_rng(7)
    U = (V[rng.integers(0, V.shape[0], 300)] + 0.5 * rng.standard_normal((300, V.shape[1]))).astype(np.float32)
    with pytest.raises(ConfigError, match="rule"):
        Selector({"ivf": build("ivf", V)}, rule="cheapest")
    sel = Selector({"ivf": build("ivf", V), "graph": build("graph", V)}, target=0.9, k=10).fit(U[:200])
    pred = sel._predict(sel._design(sel.features(U[200:])[0]))
    assert np.array_equal(sel._pick(pred, 0.0), np.argmax(pred - 1e-12 * sel.cost[None, :], axis=1))
    assert (sel._pick(pred, 1e9) == np.argmin(sel.cost)).all()
    truth = build("exact", V).search(U[200:], 10).ids
    rep = sel.evaluate(U[200:], truth, train=(U[:200], build("exact", V).search(U[:200], 10).ids))
    assert rep.recall >= 0.85 and rep.mix is not None and rep.mix_recall >= 0.85
