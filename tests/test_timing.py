"""fortify.timing: interleaved two-clock timing, bootstrap interval of the ratio of medians, honest text.

Most tests drive fake clocks from fake callables of known cost, so the true ratio is known exactly and
the result is deterministic; two use real busy loops (CPU time) with a tolerance.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pytest

from fortify.errors import ConfigError
from fortify.timing import (CPU, WALL, SpeedUp, TimingPolicy, compare, fixed_rounds, interleave, ratio_interval,
                            spread)


class FakeClocks:
    """CPU and wall clocks that only move when a fake callable runs."""

    def __init__(self, seed: int = 0) -> None:
        self.cpu, self.wall, self.calls = 0.0, 0.0, 0
        self.rng = np.random.default_rng(seed)
        self.log: list[str] = []

    def clocks(self) -> dict[str, Callable[[], float]]:
        return {CPU: lambda: self.cpu, WALL: lambda: self.wall}

    def fn(self, name: str, cost: float, sigma: float = 0.05, wall_extra: float = 0.0,
           outlier_at: int | None = None, drift: float = 0.0) -> Callable[[], None]:
        """A callable costing ``cost`` seconds of CPU (lognormal noise ``sigma``); call number ``outlier_at`` costs
        500x; ``drift``: cost grows by that fraction per call of any callable (machine getting busier)."""
        def run() -> None:
            self.calls += 1
            self.log.append(name)
            c = cost * float(self.rng.lognormal(0.0, sigma)) * (1 + drift * self.calls)
            if outlier_at is not None and self.calls == outlier_at:
                c *= 500
            self.cpu += c
            self.wall += c + wall_extra * float(self.rng.exponential())
        return run


QUICK = TimingPolicy(min_rounds=10, max_rounds=200, budget_s=30.0, warmup=1, min_sample_s=0.0)


def test_interval_covers_the_true_ratio_and_text_says_faster() -> None:
    fc = FakeClocks(1)
    s = compare(fc.fn("float", 2e-3), fc.fn("int8", 1e-3), QUICK, clocks=fc.clocks())
    assert s.ci_low <= 2.0 <= s.ci_high
    assert 1.8 < s.ci_low and s.ci_high < 2.2 and s.significant and not s.noisy
    assert s.text().startswith(f"{s.ratio:.2f}x faster (95% CI {s.ci_low:.2f}-{s.ci_high:.2f}, CPU time, "
                               f"{s.n} interleaved rounds")
    assert s.wall is not None and s.wall.clock == WALL
    w = s.wall
    assert s.text().endswith(f"; wall clock: {w.ratio:.2f}x faster, 95% CI {w.ci_low:.2f}-{w.ci_high:.2f})")


def test_equal_cost_gives_no_measurable_speedup() -> None:
    fc = FakeClocks(2)
    s = compare(fc.fn("a", 1e-3), fc.fn("b", 1e-3), QUICK, clocks=fc.clocks())
    assert s.ci_low <= 1.0 <= s.ci_high and not s.significant
    assert s.text().startswith(f"no measurable speed-up (ratio {s.ratio:.2f}, 95% CI ")
    assert "faster" not in s.text() and "slower" not in s.text()


def test_slower_candidate_is_reported_as_slower_with_inverted_interval() -> None:
    fc = FakeClocks(3)
    s = compare(fc.fn("a", 1e-3), fc.fn("b", 2e-3), QUICK, clocks=fc.clocks())
    assert s.ci_high < 1.0
    assert s.text().startswith(f"{1 / s.ratio:.2f}x slower (95% CI {1 / s.ci_high:.2f}-{1 / s.ci_low:.2f}")


def test_one_huge_outlier_does_not_make_a_500x_figure() -> None:
    # the case: 7 rounds, one float-model sample on a loaded machine takes 500x as long
    fc = FakeClocks(4)
    fns = {"float": fc.fn("float", 2e-3, outlier_at=10), "int8": fc.fn("int8", 1e-3)}
    run = interleave(fns, fixed_rounds(QUICK, 7), clocks=fc.clocks())
    a = run.samples["float"][CPU]
    assert a.max() > 100 * np.median(a)  # the outlier is in the samples
    assert float(a.mean()) / float(run.samples["int8"][CPU].mean()) > 50  # a mean would have reported it
    s = run.speedup("float", "int8")
    assert 1.6 < s.ratio < 2.4 and s.ci_high < 3.0 and s.n == 7
    assert "500" not in s.text()


def test_wide_spread_is_flagged_noisy_and_uses_more_rounds() -> None:
    quiet = FakeClocks(5)
    q = interleave({"a": quiet.fn("a", 2e-3), "b": quiet.fn("b", 1e-3)}, QUICK, clocks=quiet.clocks())
    loud = FakeClocks(5)
    n = interleave({"a": loud.fn("a", 2e-3, sigma=0.9), "b": loud.fn("b", 1e-3, sigma=0.9)}, QUICK,
                   clocks=loud.clocks())
    assert q.stopped == "narrow" and q.rounds < n.rounds
    s = n.speedup("a", "b")
    assert s.noisy and s.spread > 0.25 and "interleaved rounds, noisy; wall clock: " in s.text()
    assert not q.speedup("a", "b").noisy


def test_interleaving_alternates_the_order() -> None:
    fc = FakeClocks(6)
    interleave({"a": fc.fn("a", 1e-3), "b": fc.fn("b", 1e-3)}, fixed_rounds(QUICK, 4), clocks=fc.clocks())
    timed = fc.log[2:]  # after one warm-up call each
    assert timed == ["a", "b", "b", "a", "a", "b", "b", "a"]


def test_drift_in_machine_load_cancels_out() -> None:
    # cost triples over the run; equal callables must still come out equal because the order alternates
    fc = FakeClocks(7)
    s = interleave({"a": fc.fn("a", 1e-3, sigma=0.01, drift=0.05), "b": fc.fn("b", 1e-3, sigma=0.01, drift=0.05)},
                   fixed_rounds(QUICK, 40), clocks=fc.clocks()).speedup("a", "b")
    assert s.ci_low <= 1.0 <= s.ci_high and abs(s.ratio - 1) < 0.05


def test_wall_clock_inflation_leaves_the_cpu_headline_alone() -> None:
    # a loaded machine: wall time gets large random waits, CPU time does not
    fc = FakeClocks(8)
    s = compare(fc.fn("a", 2e-3, wall_extra=0.02), fc.fn("b", 1e-3, wall_extra=0.02), QUICK, clocks=fc.clocks())
    assert s.clock == CPU and s.ci_low <= 2.0 <= s.ci_high
    assert s.wall is not None and s.wall.spread > s.spread


def test_metrics_round_trip_keeps_the_text() -> None:
    fc = FakeClocks(9)
    s = compare(fc.fn("a", 3e-3), fc.fn("b", 1e-3), QUICK, clocks=fc.clocks())
    m = s.to_metrics("speedup_b256")
    assert {"speedup_b256", "speedup_b256_ci_low", "speedup_b256_ci_high", "speedup_b256_noisy",
            "speedup_b256_wall", "speedup_b256_wall_ci_high"} <= set(m)
    assert all(isinstance(v, float) for v in m.values())
    back = SpeedUp.from_metrics(m, "speedup_b256")
    assert back is not None and back.text() == s.text()
    assert SpeedUp.from_metrics({"speedup_b256": 528.3}, "speedup_b256") is None  # a bare ratio is never shown


def test_real_busy_loops_of_known_relative_cost() -> None:
    def work() -> int:
        return sum(i * i for i in range(3000))

    def twice() -> None:
        work()
        work()

    policy = TimingPolicy(min_rounds=10, max_rounds=60, budget_s=2.0, min_sample_s=0.002)
    s = compare(twice, work, policy)
    assert s.significant and abs(s.ratio - 2.0) < 0.3 and s.ci_low < 2.3 and s.ci_high > 1.7
    assert "x faster (95% CI" in s.text()
    same = compare(work, work, policy)
    assert abs(same.ratio - 1.0) < 0.15


def test_ratio_interval_and_spread_references() -> None:
    a, b = np.full(20, 4.0), np.full(20, 2.0)
    assert ratio_interval(a, b) == (2.0, 2.0, 2.0)
    assert spread(np.array([1.0, 2.0, 3.0, 4.0, 5.0])) == pytest.approx(2.0 / 3.0)
    assert all(math.isnan(v) for v in ratio_interval(a, np.zeros(20)))
    with pytest.raises(ConfigError, match="paired"):
        ratio_interval(a, b[:5])


def test_bad_policy_and_names_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="min_rounds"):
        TimingPolicy(min_rounds=2)
    with pytest.raises(ConfigError, match="headline"):
        TimingPolicy(headline="gpu")
    with pytest.raises(ConfigError, match="nothing"):
        interleave({})
    fc = FakeClocks()
    with pytest.raises(ConfigError, match="baseline"):
        interleave({"a": fc.fn("a", 1e-3)}, QUICK, baseline="zzz", clocks=fc.clocks())
    run = interleave({"a": fc.fn("a", 1e-3)}, QUICK, clocks=fc.clocks())
    assert run.rounds == QUICK.min_rounds
    with pytest.raises(ConfigError, match="no samples"):
        run.speedup("a", "b")


def test_table_cell_follows_the_same_rule() -> None:
    base = dict(baseline_median=2e-3, candidate_median=1e-3, n=30, spread=0.05, noisy=False)
    assert SpeedUp(ratio=2.0, ci_low=1.9, ci_high=2.1, **base).cell() == "2.00x faster (CI 1.90-2.10)"
    assert SpeedUp(ratio=0.5, ci_low=0.4, ci_high=0.625, **base).cell() == "2.00x slower (CI 1.60-2.50)"
    assert SpeedUp(ratio=1.04, ci_low=0.91, ci_high=1.18, **base).cell() == "none (CI 0.91-1.18)"
    assert SpeedUp(ratio=528.3, ci_low=300.0, ci_high=700.0, clock=WALL, threads=2, contention=95.0,
                   **base).cell() == "contended"
