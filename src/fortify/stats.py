"""Intervals for the figures fortify prints: exact binomial (Clopper-Pearson) bounds for accuracies.

An accuracy measured on ``n`` images is a binomial proportion ``k / n``; its exact two-sided
``level`` interval is ``[Beta^-1(a/2; k, n-k+1), Beta^-1(1-a/2; k+1, n-k)]`` with ``a = 1 - level``
(0 and 1 at the ends). Clopper & Pearson 1934; conservative, never narrower than the nominal level.
"""
from __future__ import annotations

import numpy as np
from scipy.special import betaincinv

from fortify.errors import ConfigError


def clopper_pearson_lower(k: np.ndarray | int, n: int, alpha: float) -> np.ndarray:
    """One-sided ``(1 - alpha)`` Clopper-Pearson lower bound of a binomial proportion, ``k`` of ``n``
    successes: ``Beta^-1(alpha; k, n - k + 1)``, and 0 when ``k = 0``. Vectorised over ``k``."""
    k = np.asarray(k, dtype=np.float64)
    out = np.zeros_like(k)
    pos = k > 0
    out[pos] = betaincinv(k[pos], n - k[pos] + 1, alpha)
    return out


def proportion_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided ``level`` interval of ``k`` successes out of ``n`` (ConfigError if not 0 <= k <= n)."""
    if not (isinstance(n, int) and n >= 1 and 0 <= k <= n and 0 < level < 1):
        raise ConfigError(f"need 0 <= k <= n, n >= 1 and 0 < level < 1; got k={k!r}, n={n!r}, level={level!r}")
    a = 1.0 - level
    lo = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, a / 2))
    hi = 1.0 if k == n else float(betaincinv(k + 1, n - k, 1 - a / 2))
    return lo, hi


def rate_text(rate: float, n: int, level: float = 0.95) -> str:
    """``"75.20% (95% CI 71.2-78.9%, n=500)"`` for an accuracy ``rate`` measured on ``n`` images."""
    k = int(round(rate * n))
    lo, hi = proportion_interval(k, n, level)
    return f"{100 * rate:.2f}% ({100 * level:.0f}% CI {100 * lo:.1f}-{100 * hi:.1f}%, n={n})"


__all__ = ["clopper_pearson_lower", "proportion_interval", "rate_text"]
