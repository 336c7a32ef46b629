"""Deterministic, seeded, stratified train/test splitting of a labelled dataset."""
from __future__ import annotations

import numpy as np

from fortify.errors import ConfigError


def stratified_split(labels: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices ``0..N-1`` into ``(train_idx, test_idx)`` with exactly ``n_test`` test indices.

    Method: with ``rng = numpy.random.default_rng(seed)`` (PCG64), each class ``c`` (ascending)
    gets ``floor(count_c * n_test / N)`` test slots; the leftover slots go to the classes with the
    largest fractional remainders (ties: lower class first). Within each class the test members are
    the first of ``rng.permutation(class_indices)``. Finally train and test index arrays are each
    shuffled with the same ``rng`` so that taking a prefix (``limit``) mixes the classes.
    The result depends only on ``labels``, ``n_test`` and ``seed``.

    Args:
        labels: int array ``(N,)``.
        n_test: number of test examples, ``1 <= n_test < N``.
        seed: the seed of the split.
    Returns:
        ``(train_idx, test_idx)``: disjoint int64 arrays covering ``0..N-1``.
    """
    y = np.asarray(labels)
    n = len(y)
    if not 1 <= n_test < n:
        raise ConfigError(f"n_test must be in [1, {n - 1}], got {n_test}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * n_test / n
    quota = np.floor(exact).astype(np.int64)
    remainder = exact - quota
    order = sorted(range(len(classes)), key=lambda i: (-remainder[i], i))
    for i in order[: n_test - int(quota.sum())]:
        quota[i] += 1
    train_parts, test_parts = [], []
    for c, q in zip(classes, quota):
        members = rng.permutation(np.flatnonzero(y == c))
        test_parts.append(members[:q])
        train_parts.append(members[q:])
    train_idx = rng.permutation(np.concatenate(train_parts)).astype(np.int64)
    test_idx = rng.permutation(np.concatenate(test_parts)).astype(np.int64)
    return train_idx, test_idx


__all__ = ["stratified_split"]
