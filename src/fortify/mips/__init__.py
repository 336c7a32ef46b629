"""MIPS: maximum inner product search for large output layers, with a per-query choice of index.

``index = INDEXES.get("ivf").build(V)`` (or :func:`build`); ``res = index.search(U, k=10, budget=8)`` returns
:class:`SearchResult` (``ids (q, k)``, ``scores (q, k)``, ``cost``: inner products per query, flops, seconds).
Every module of this package is imported by :func:`fortify.registry.discover`, so an index is available
everywhere (CLI, selector, benchmark, contract tests) as soon as its file registers it. :class:`FastHead`
predicts a linear layer's top-k classes through an index; :class:`Selector` picks an index and budget per query.
"""
from __future__ import annotations

from typing import Any

from fortify.mips.base import INDEXES, Index, SearchCost, SearchResult, recall_at_k
from fortify.registry import discover

discover(__name__)
for _name, _cls in INDEXES.items():
    globals()[_cls.__name__] = _cls


def build(name: str, V: object, **options: Any) -> Index:
    """Build the index registered as ``name`` over ``V (n, d)`` (UnknownNameError / ConfigError / InputError)."""
    return INDEXES.get(name).build(V, **options)  # type: ignore[no-any-return]


def load(path: str) -> Index:
    """An index saved with :meth:`Index.save` (DataFileError if corrupt)."""
    return Index.load(path)


__all__ = ["INDEXES", "Index", "SearchCost", "SearchResult", "build", "load", "recall_at_k"] + [
    c.__name__ for _, c in INDEXES.items()]
