"""Contract tests over the MIPS index registry (parametrized on ``INDEXES.names()`` at collection, so a new index
is covered by registering it).

Every index: ``build`` then ``search`` at its default budget returns ``ids (q, k)`` int64 in ``[0, n)`` without
repeats, ``scores (q, k)`` float32, descending, equal to the exact inner products of the returned ids; a cost with
``inner_products`` per query in ``(0, n + overhead]``, flops and wall time; at ``full_budget`` the exact top-k;
the budget ladder ascends to ``full_budget``; ``build`` leaves ``V`` untouched (array and tensor inputs alike);
a saved index answers identically; bad inputs (dimension, k, NaN, budget, unknown option) are typed; every module
docstring names its paper/reference and cost.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fortify.errors import ConfigError, InputError
from fortify.mips import INDEXES, Index


def small(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    V = (rng.standard_normal((600, 8)) * rng.lognormal(0, 0.5, (600, 1))).astype(np.float32)
    return V, rng.standard_normal((9, 8)).astype(np.float32)


@pytest.mark.parametrize("name", INDEXES.names())
def test_index_contract(name: str, tmp_path: Path) -> None:
    V, U = small()
    keep = V.copy()
    idx = INDEXES.get(name).build(torch.from_numpy(V))
    assert isinstance(idx, Index) and idx.name == name and (idx.n, idx.d) == V.shape
    assert np.array_equal(V, keep), "build must not modify V"
    res = idx.search(U, 6)
    assert res.ids.shape == (9, 6) and res.ids.dtype == np.int64 and res.scores.dtype == np.float32
    assert ((res.ids >= 0) & (res.ids < 600)).all()
    assert all(len(set(r)) == 6 for r in res.ids.tolist()), "ids repeat within a row"
    assert (np.diff(res.scores, axis=1) <= 1e-6).all(), "scores must be descending"
    exact_sc = np.einsum("qkd,qd->qk", V[res.ids], U)
    assert np.allclose(res.scores, exact_sc, rtol=1e-4, atol=1e-4), "scores must be exact inner products"
    c = res.cost
    assert c.per_query.shape == (9,) and 0 < c.inner_products and c.flops > 0 and c.seconds >= 0
    assert c.per_query.max() <= 600 + 2 * np.sqrt(600) + 64, "an index may not cost much more than exact search"
    full = idx.search(U, 6, idx.full_budget)
    ref = np.argsort(-(U.astype(np.float64) @ V.T.astype(np.float64)), axis=1)[:, :6]
    assert np.array_equal(np.sort(full.ids, axis=1), np.sort(ref, axis=1)), f"{name} not exact at full budget"
    ladder = idx.budgets()
    assert ladder == sorted(set(ladder)) and ladder[-1] == idx.full_budget and ladder[0] >= 1
    again = Index.load(idx.save(tmp_path / "x.npz"))
    r2 = again.search(U, 6)
    assert np.array_equal(r2.ids, res.ids) and np.array_equal(r2.scores, res.scores)


@pytest.mark.parametrize("name", INDEXES.names())
def test_index_bad_inputs_are_typed(name: str) -> None:
    V, U = small()
    idx = INDEXES.get(name).build(V)
    nan = U.copy()
    nan[0, 0] = np.nan
    for bad, k in ((U[:, :3], 2), (nan, 2), (U, 601), (U, 0), (U[0], 2), (U.astype(np.int64), 2)):
        with pytest.raises(InputError):
            idx.search(bad, k)
    with pytest.raises(ConfigError):
        idx.search(U, 2, budget=-1)
    with pytest.raises(ConfigError):
        INDEXES.get(name).build(V, no_such_option=1)
    with pytest.raises(InputError):
        INDEXES.get(name).build(np.full((5, 3), np.nan, dtype=np.float32))


def test_every_index_documents_reference_and_cost() -> None:
    for name, cls in INDEXES.items():
        doc = " ".join((sys.modules[cls.__module__].__doc__ or "").lower().split())
        assert "cost" in doc, f"{name}: the module docstring must state the cost"
        assert cls.__doc__, f"{name}: the class needs a docstring"
