"""fortify.mips indexes against brute force: exact equals ``argsort(U @ V.T)``; every approximate index is exact
at its full budget and its recall is monotone in the budget (fixed seed); saved/loaded indexes answer
identically; bad inputs are typed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fortify.errors import ConfigError, DataFileError, InputError, UnknownNameError
from fortify.mips import INDEXES, Index, build, load, recall_at_k

APPROX = [n for n in INDEXES.names() if not INDEXES.get(n).exact]


def brute(V: np.ndarray, U: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = U.astype(np.float64) @ V.astype(np.float64).T
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(s, ids, axis=1)


def test_exact_equals_brute_force(data: tuple[np.ndarray, np.ndarray]) -> None:
    V, U = data
    res = build("exact", V, chunk=300).search(U, 7)
    ids, sc = brute(V, U, 7)
    assert np.array_equal(res.ids, ids)
    assert np.allclose(res.scores, sc, rtol=1e-5, atol=1e-4)
    assert res.cost.inner_products == V.shape[0] and res.cost.flops == 2 * 16 * V.shape[0] * U.shape[0]


@pytest.mark.parametrize("name", APPROX)
def test_full_budget_is_exact_and_recall_monotone(name: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    V, U = data
    truth, _ = brute(V, U, 10)
    idx = build(name, V)
    ladder = idx.budgets()
    assert ladder[-1] == idx.full_budget and ladder == sorted(ladder)
    recalls = [float(recall_at_k(idx.search(U, 10, b).ids, truth).mean()) for b in ladder]
    assert recalls[-1] == 1.0, f"{name} at full budget: recall {recalls[-1]}"
    assert all(b >= a - 1e-12 for a, b in zip(recalls, recalls[1:])), f"{name} recall not monotone: {recalls}"
    assert recalls[0] < 1.0 or name == "ivf", "the smallest budget should be an approximation"
    costs = [idx.search(U, 10, b).cost.inner_products for b in (ladder[0], ladder[-1])]
    assert costs[0] < costs[1]


@pytest.mark.parametrize("name", INDEXES.names())
def test_save_load_answers_identically(name: str, data: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    V, U = data
    idx = build(name, V)
    b = idx.budgets()[len(idx.budgets()) // 2]
    before = idx.search(U, 5, b)
    path = idx.save(tmp_path / "i.npz")
    again = load(str(path))
    assert type(again) is type(idx) and (again.n, again.d) == (idx.n, idx.d)
    after = again.search(U, 5, b)
    assert np.array_equal(before.ids, after.ids) and np.array_equal(before.scores, after.scores)
    assert np.array_equal(before.cost.per_query, after.cost.per_query)


def test_bad_inputs_are_typed(data: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    V, U = data
    idx = build("ivf", V)
    with pytest.raises(InputError, match="dimension"):
        idx.search(U[:, :5], 3)
    with pytest.raises(InputError, match="larger than"):
        idx.search(U, V.shape[0] + 1)
    nan = U.copy()
    nan[3, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        idx.search(nan, 3)
    badv = V.copy()
    badv[7, 0] = np.inf
    with pytest.raises(InputError, match="row 7"):
        build("graph", badv)
    with pytest.raises(InputError, match="empty"):
        build("exact", np.empty((0, 4), dtype=np.float32))
    with pytest.raises(InputError, match="empty"):
        INDEXES.create("exact").search(U, 1)
    with pytest.raises(UnknownNameError, match="allowed"):
        build("no-such-index", V)
    with pytest.raises(ConfigError):
        idx.search(U, 3, budget=0)
    with pytest.raises(ConfigError):
        build("ivf", V, nprobe=3)
    with pytest.raises(InputError):
        idx.search(U, 0)
    path = idx.save(tmp_path / "ok.npz")
    blob = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "junk.npz").write_bytes(b"not an index at all")
    for bad in ("trunc.npz", "junk.npz", "missing.npz"):
        with pytest.raises(DataFileError):
            Index.load(tmp_path / bad)
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    with pytest.raises(DataFileError):
        Index.load(tmp_path / "foreign.npz")


def test_v_is_held_once(data: tuple[np.ndarray, np.ndarray]) -> None:
    V, _ = data
    for name in INDEXES.names():
        arrays = INDEXES.get(name).build(V)._arrays()
        copies = [k for k, a in arrays.items() if a.dtype == np.float32 and a.shape[0] == V.shape[0]
                  and a.ndim == 2 and a.shape[1] in (V.shape[1], V.shape[1] + 1)]
        assert len(copies) == 1, f"{name} holds {copies}"


def test_graph_navigable_on_separated_clusters() -> None:
    """20k x 32 vectors in 100 tight, well-separated clusters: the kNN graph falls apart into one component per
    cluster, so fixed entry points strand the queries of every cluster without one (the old graph: recall@10
    0.91 at any ef). Per-query entry points and the cluster links reach >= 0.95 at a small budget, each query
    costing < 2% of an exhaustive scan."""
    rng = np.random.default_rng(0)
    n, d, q = 20_000, 32, 200
    C = rng.standard_normal((100, d))
    V = ((C[rng.integers(0, 100, n)] + 0.1 * rng.standard_normal((n, d))) * rng.lognormal(0, 0.3, (n, 1)))
    U = C[rng.integers(0, 100, q)] + 0.1 * rng.standard_normal((q, d))
    V, U = V.astype(np.float32), U.astype(np.float32)
    truth, _ = brute(V, U, 10)
    res = build("graph", V).search(U, 10, 32)
    assert float(recall_at_k(res.ids, truth).mean()) >= 0.95
    assert res.cost.inner_products < 0.02 * n
