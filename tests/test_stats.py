"""Exact binomial intervals against an independent reference (scipy.stats.binomtest) and edge cases."""
from __future__ import annotations

import pytest
from scipy.stats import binomtest

from fortify.errors import ConfigError
from fortify.stats import proportion_interval, rate_text


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (376, 500), (1, 1), (999, 1000)])
def test_matches_scipy_clopper_pearson(k: int, n: int) -> None:
    ref = binomtest(k, n).proportion_ci(0.95, method="exact")
    lo, hi = proportion_interval(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-9) and hi == pytest.approx(ref.high, abs=1e-9)
    assert lo <= k / n <= hi


def test_rate_text_carries_n_and_the_interval() -> None:
    text = rate_text(0.752, 500)
    assert text.startswith("75.20% (95% CI ") and text.endswith(", n=500)")
    lo, hi = proportion_interval(376, 500)
    assert f"{100 * lo:.1f}-{100 * hi:.1f}%" in text


@pytest.mark.parametrize("k, n", [(-1, 10), (11, 10), (1, 0)])
def test_bad_counts_are_config_errors(k: int, n: int) -> None:
    with pytest.raises(ConfigError):
        proportion_interval(k, n)
