"""One BLAS thread for the MIPS tests (the shared machine's OpenBLAS threads contend badly), and small data."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _one_blas_thread() -> Iterator[None]:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="session")
def data() -> tuple[np.ndarray, np.ndarray]:
    """``(V (2000, 16), U (40, 16))``: clustered vectors with varying norms (the unnormalised MIPS case) and queries from the same mixture."""
    n, d, q = 2000, 16, 40
    rng = np.random.default_rng(0)
    C = rng.standard_normal((20, d))
    V = (C[rng.integers(0, 20, n)] + 0.4 * rng.standard_normal((n, d))) * rng.lognormal(0, 0.4, (n, 1))
    U = C[rng.integers(0, 20, q)] + 0.6 * rng.standard_normal((q, d))
    return V.astype(np.float32), U.astype(np.float32)
