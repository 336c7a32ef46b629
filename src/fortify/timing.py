"""Honest timing: interleaved repeats, two clocks, a bootstrap interval on the ratio of medians.

Every speed-up fortify prints comes from here, and only with its interval:

* **Interleaved.** The callables run in rounds, each round once per callable, the order rotated
  every round (``A B``, ``B A``, ... for two), so a drift in machine load, a CPU frequency change or
  a thread pool still spinning from the previous call hits all of them alike. A round's samples
  are therefore *paired*, and the interval is a paired bootstrap over rounds.
* **Two clocks per sample.** ``cpu``: CPU time of the whole process (``time.process_time``, summed
  over every thread, including ONNX Runtime's and PyTorch's own intra-op pools; ``thread_time``
  would miss their work). It does not count the time threads wait to be scheduled, so on a machine
  shared with other jobs it stays put while wall time inflates. ``wall``: elapsed time
  (``time.perf_counter``), the latency a caller sees, threads included. **The headline is CPU
  time** (robust to other load, so a ratio measured on a busy machine says something about the
  models rather than the neighbours); wall is always reported beside it. That robustness holds for
  one thread: a pool of several threads on an oversubscribed machine waits for its threads to be
  scheduled and busy-waits meanwhile (PyTorch's OpenMP pool spins unless ``OMP_WAIT_POLICY=PASSIVE``
  was set before torch was imported), and CPU time counts the spinning. Measured here, on 2 cores
  shared with other jobs: a 64-32 MLP at batch 1 took 0.07 ms on one thread and 2.4-7.3 ms on two,
  CPU time and wall alike, so a float-vs-int8 ratio taken with two threads read 30-170x. Callers
  time the headline on one thread (:mod:`fortify.compress.measure` does) and mark a multi-thread
  figure ``contention`` when it is much slower than one thread (:attr:`SpeedUp.contention`).
* **Enough repeats.** After ``min_rounds`` rounds the interval is recomputed every ``check_every``
  rounds; measuring stops when its relative width ``(high - low) / ratio`` is at most
  ``target_rel_width`` for every pair, or after ``max_rounds`` rounds, or when ``budget_s`` seconds
  of wall time have passed (``min_rounds`` always run).
* **Interval.** ``ratio = median(baseline) / median(candidate)`` (``> 1``: the candidate is faster);
  95% percentile interval of that ratio over ``resamples`` paired bootstrap resamples of the rounds
  (``numpy``, seeded, so the same samples always give the same interval). Medians make one huge
  outlier (a page fault, a context switch) irrelevant: it moves the median by one rank at most.
* **Noisy.** ``spread`` is the larger of the two callables' IQR / median; a measurement is
  ``noisy`` when the spread exceeds ``noisy_spread`` or the interval's relative width exceeds
  ``noisy_rel_width``. :meth:`SpeedUp.text` says so.

:meth:`SpeedUp.text` prints a speed-up (or slow-down) only when the interval excludes 1, e.g.
``2.31x faster (95% CI 2.12-2.55, CPU time, 30 interleaved rounds)``, otherwise
``no measurable speed-up (ratio 1.04, 95% CI 0.91-1.18, CPU time, 30 interleaved rounds)``.

Cost: ``rounds * sum(callable cost * inner)`` plus ``warmup`` calls each; ``inner`` (calls per
sample) is chosen in the warm-up so one sample lasts at least ``min_sample_s``. Each bootstrap is
``O(resamples * rounds)`` numpy work (about a millisecond for 2,000 resamples of 100 rounds).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import numpy as np

from fortify.errors import ConfigError

CPU, WALL = "cpu", "wall"
CLOCKS = (CPU, WALL)
CLOCK_NAMES = {CPU: "CPU time", WALL: "wall clock"}
Clock = Callable[[], float]
DEFAULT_CLOCKS: Mapping[str, Clock] = {CPU: time.process_time, WALL: time.perf_counter}


@dataclass(frozen=True)
class TimingPolicy:
    """How long and how carefully to time (see the module doc for each rule)."""

    min_rounds: int = 10
    max_rounds: int = 200
    budget_s: float = 10.0
    target_rel_width: float = 0.10
    check_every: int = 5
    warmup: int = 2
    min_sample_s: float = 0.002
    max_inner: int = 10_000
    resamples: int = 2000
    seed: int = 0
    noisy_spread: float = 0.25
    noisy_rel_width: float = 0.25
    headline: str = CPU

    def __post_init__(self) -> None:
        if self.min_rounds < 3 or self.max_rounds < self.min_rounds:
            raise ConfigError(f"timing: need 3 <= min_rounds <= max_rounds; got {self.min_rounds}, {self.max_rounds}")
        if self.check_every < 1 or self.warmup < 0 or self.resamples < 100 or self.max_inner < 1:
            raise ConfigError("timing: check_every >= 1, warmup >= 0, resamples >= 100 and max_inner >= 1 required")
        if not (self.budget_s >= 0 and self.min_sample_s >= 0 and self.target_rel_width > 0):
            raise ConfigError("timing: budget_s and min_sample_s must be >= 0 and target_rel_width > 0")
        if self.headline not in CLOCKS:
            raise ConfigError(f"timing: headline must be one of {', '.join(CLOCKS)}; got {self.headline!r}")


def _fmt(v: float) -> str:
    """A ratio with 2 decimals below 10, 1 decimal above (``2.31``, ``12.4``)."""
    return "nan" if not math.isfinite(v) else (f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}")


@dataclass(frozen=True)
class SpeedUp:
    """``candidate`` against ``baseline`` on one clock: ``ratio = baseline / candidate`` medians.

    Medians are seconds per call (``nan`` when rebuilt by :meth:`from_metrics`). ``n``: interleaved
    rounds; ``spread``: the larger IQR / median of the two; ``wall``: the same comparison on the
    wall clock when this one is the CPU-time headline; ``threads``: the intra-op threads it ran with
    (``None``: not recorded). ``contention > 0``: the run with ``threads`` threads was that many times
    slower than the same models on one thread (an oversubscribed machine: thread pools waiting to be
    scheduled, spinning meanwhile, which CPU time counts too), so its ratio measures the machine's load,
    not the models: :meth:`short` and :meth:`text` then print no ratio for it.
    """

    baseline_median: float
    candidate_median: float
    ratio: float
    ci_low: float
    ci_high: float
    n: int
    spread: float
    noisy: bool
    clock: str = CPU
    wall: SpeedUp | None = None
    threads: int | None = None
    contention: float = 0.0

    @property
    def significant(self) -> bool:
        """The 95% interval excludes 1 (a real speed-up or slow-down)."""
        return self.ci_low > 1.0 or self.ci_high < 1.0

    def _how(self) -> str:
        """``CPU time, 1 thread`` / ``wall clock, 2 threads``."""
        name = CLOCK_NAMES.get(self.clock, self.clock)
        return name if self.threads is None else f"{name}, {self.threads} thread{'s' if self.threads != 1 else ''}"

    def short(self) -> str:
        """``2.31x faster, 95% CI 2.12-2.55`` / ``1.40x slower, ...`` / ``no measurable difference, ...``."""
        if self.contention > 0:
            return (f"not comparable: {self.threads or 'several'} threads ran {_fmt(self.contention)}x slower "
                    f"than 1 thread (contended machine)")
        if self.ci_low > 1.0:
            head = f"{_fmt(self.ratio)}x faster, 95% CI {_fmt(self.ci_low)}-{_fmt(self.ci_high)}"
        elif self.ci_high < 1.0:
            head = f"{_fmt(1 / self.ratio)}x slower, 95% CI {_fmt(1 / self.ci_high)}-{_fmt(1 / self.ci_low)}"
        else:
            head = (f"no measurable difference (ratio {_fmt(self.ratio)}, 95% CI "
                    f"{_fmt(self.ci_low)}-{_fmt(self.ci_high)})")
        return head + (", noisy" if self.noisy else "")

    def cell(self) -> str:
        """A table cell: ``2.31x faster (CI 2.12-2.55)``, ``none (CI 0.91-1.18)``, ``contended``; `` noisy`` appended."""
        if self.contention > 0:
            return "contended"
        lo, hi = _fmt(self.ci_low), _fmt(self.ci_high)
        if self.ci_low > 1.0:
            head = f"{_fmt(self.ratio)}x faster (CI {lo}-{hi})"
        elif self.ci_high < 1.0:
            head = f"{_fmt(1 / self.ratio)}x slower (CI {_fmt(1 / self.ci_high)}-{_fmt(1 / self.ci_low)})"
        else:
            head = f"none (CI {lo}-{hi})"
        return head + (" noisy" if self.noisy else "")

    def text(self) -> str:
        """The sentence to print: a speed-up only when the interval excludes 1, always with it."""
        if self.contention > 0:
            return self.short()
        how = f"{self._how()}, {self.n} interleaved rounds"
        noisy = ", noisy" if self.noisy else ""
        wall = f"; {self.wall._how()}: {self.wall.short()}" if self.wall is not None else ""
        lo, hi = _fmt(self.ci_low), _fmt(self.ci_high)
        if self.ci_low > 1.0:
            return f"{_fmt(self.ratio)}x faster (95% CI {lo}-{hi}, {how}{noisy}{wall})"
        if self.ci_high < 1.0:
            inv_lo, inv_hi = _fmt(1 / self.ci_high), _fmt(1 / self.ci_low)
            return f"{_fmt(1 / self.ratio)}x slower (95% CI {inv_lo}-{inv_hi}, {how}{noisy}{wall})"
        return f"no measurable speed-up (ratio {_fmt(self.ratio)}, 95% CI {lo}-{hi}, {how}{noisy}{wall})"

    def to_metrics(self, key: str) -> dict[str, float]:
        """Run-store numbers: ``key`` (the ratio), ``key_ci_low``, ``key_ci_high``, ``key_rounds``,
        ``key_spread``, ``key_noisy`` (0/1), ``key_threads`` and ``key_contention`` when recorded, and the same
        under ``key_wall`` for the wall clock. A contended figure stores only ``key_threads`` and
        ``key_contention``: its ratio measures the machine's load and is never shown."""
        if self.contention > 0:
            return {f"{key}_threads": float(self.threads or 0), f"{key}_contention": self.contention}
        out = {key: self.ratio, f"{key}_ci_low": self.ci_low, f"{key}_ci_high": self.ci_high,
               f"{key}_rounds": float(self.n), f"{key}_spread": self.spread, f"{key}_noisy": float(self.noisy)}
        if self.threads is not None:
            out[f"{key}_threads"] = float(self.threads)
        if self.contention > 0:
            out[f"{key}_contention"] = self.contention
        if self.wall is not None:
            out.update(self.wall.to_metrics(f"{key}_wall"))
        return out

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any], key: str, clock: str = CPU) -> SpeedUp | None:
        """The :class:`SpeedUp` :meth:`to_metrics` stored under ``key`` (``None`` if it is incomplete)."""
        threads = metrics.get(f"{key}_threads")
        if metrics.get(f"{key}_contention"):
            return cls(math.nan, math.nan, math.nan, math.nan, math.nan, 0, math.nan, True, clock, None,
                       int(threads) if threads else None, float(metrics[f"{key}_contention"]))
        names = (key, f"{key}_ci_low", f"{key}_ci_high", f"{key}_rounds")
        if any(metrics.get(k) is None for k in names):
            return None
        wall = cls.from_metrics(metrics, f"{key}_wall", WALL) if clock == CPU else None
        return cls(math.nan, math.nan, float(metrics[key]), float(metrics[f"{key}_ci_low"]),
                   float(metrics[f"{key}_ci_high"]), int(metrics[f"{key}_rounds"]),
                   float(metrics.get(f"{key}_spread") or 0.0), bool(metrics.get(f"{key}_noisy")), clock, wall,
                   None if threads is None else int(threads), float(metrics.get(f"{key}_contention") or 0.0))


def spread(samples: np.ndarray) -> float:
    """IQR / median of ``samples`` (``inf`` when the median is 0)."""
    q1, med, q3 = np.percentile(samples, [25, 50, 75])
    return float((q3 - q1) / med) if med > 0 else math.inf


def ratio_interval(baseline: np.ndarray, candidate: np.ndarray, *, resamples: int = 2000,
                   seed: int = 0) -> tuple[float, float, float]:
    """``(ratio, low, high)``: ratio of medians ``baseline / candidate`` and its 95% paired bootstrap interval.

    ``baseline`` and ``candidate`` are ``(n,)`` samples paired by round; resampling whole rounds
    keeps a round's shared load in both. ``nan`` everywhere when a median is 0.
    """
    a, b = np.asarray(baseline, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ConfigError(f"timing: need two paired 1-d samples of >= 2 rounds; got {a.shape} and {b.shape}")
    mb = float(np.median(b))
    if mb <= 0 or float(np.median(a)) <= 0:
        return math.nan, math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, a.size, size=(resamples, a.size))
    meds_b = np.median(b[idx], axis=1)
    boot = np.median(a[idx], axis=1) / np.where(meds_b > 0, meds_b, np.nan)
    low, high = np.nanpercentile(boot, [2.5, 97.5])
    return float(np.median(a)) / mb, float(low), float(high)


@dataclass
class Interleaved:
    """Samples of an interleaved run: ``samples[name][clock]`` seconds per call, one per round."""

    samples: dict[str, dict[str, np.ndarray]]
    inner: dict[str, int]
    policy: TimingPolicy
    stopped: str = ""
    elapsed_s: float = 0.0
    _cache: dict[tuple[str, str, str], SpeedUp] = field(default_factory=dict, repr=False)

    @property
    def rounds(self) -> int:
        """Rounds completed (every callable has one sample per round and clock)."""
        return min((len(v[WALL]) for v in self.samples.values()), default=0)

    def median(self, name: str, clock: str | None = None) -> float:
        """Median seconds per call of ``name`` on ``clock`` (default: the policy's headline)."""
        return float(np.median(self.samples[name][clock or self.policy.headline]))

    def speedup(self, baseline: str, candidate: str, clock: str | None = None) -> SpeedUp:
        """``candidate`` against ``baseline`` on ``clock`` (headline CPU time carries the wall figure)."""
        clock = clock or self.policy.headline
        if clock not in CLOCKS:
            raise ConfigError(f"timing: clock must be one of {', '.join(CLOCKS)}; got {clock!r}")
        for n in (baseline, candidate):
            if n not in self.samples:
                raise ConfigError(f"timing: no samples named {n!r}; have {', '.join(self.samples)}")
        ck = (baseline, candidate, clock)
        if ck not in self._cache:
            a, b = self.samples[baseline][clock], self.samples[candidate][clock]
            ratio, low, high = ratio_interval(a, b, resamples=self.policy.resamples, seed=self.policy.seed)
            sp = max(spread(a), spread(b))
            rel = (high - low) / ratio if ratio > 0 else math.inf
            noisy = not (sp <= self.policy.noisy_spread and rel <= self.policy.noisy_rel_width)
            wall = self.speedup(baseline, candidate, WALL) if clock == CPU else None
            self._cache[ck] = SpeedUp(float(np.median(a)), float(np.median(b)), ratio, low, high, a.size, sp,
                                      noisy, clock, wall)
        return self._cache[ck]

    def narrow_enough(self, baseline: str) -> bool:
        """Every callable's headline interval against ``baseline`` is at most ``target_rel_width`` wide."""
        self._cache.clear()
        for name in self.samples:
            if name == baseline:
                continue
            s = self.speedup(baseline, name)
            if not (s.ratio > 0 and (s.ci_high - s.ci_low) / s.ratio <= self.policy.target_rel_width):
                return False
        return True


def _calibrate(fn: Callable[[], Any], policy: TimingPolicy, clocks: Mapping[str, Clock]) -> int:
    """Run the warm-up calls of ``fn``; the number of calls per sample so one lasts ``min_sample_s``."""
    cost = 0.0
    for _ in range(policy.warmup):
        t = {c: clocks[c]() for c in CLOCKS}
        fn()
        cost = max(clocks[c]() - t[c] for c in CLOCKS)
    if policy.warmup == 0 or cost <= 0:
        return 1
    return int(min(policy.max_inner, max(1, math.ceil(policy.min_sample_s / cost))))


def _sample(fn: Callable[[], Any], inner: int, clocks: Mapping[str, Clock]) -> tuple[float, float]:
    """One sample: ``(cpu, wall)`` seconds per call over ``inner`` calls."""
    c0, w0 = clocks[CPU](), clocks[WALL]()
    for _ in range(inner):
        fn()
    w1, c1 = clocks[WALL](), clocks[CPU]()
    return (c1 - c0) / inner, (w1 - w0) / inner


def interleave(fns: Mapping[str, Callable[[], Any]], policy: TimingPolicy | None = None, *,
               baseline: str | None = None, clocks: Mapping[str, Clock] | None = None) -> Interleaved:
    """Time the callables ``{name: fn}`` interleaved until the intervals are narrow or the budget is spent.

    ``baseline`` (default: the first name) is what the stopping rule compares the others with;
    ``clocks`` replaces ``{"cpu": process_time, "wall": perf_counter}`` (tests pass fake clocks).
    With one callable the run stops after ``min_rounds`` (no ratio to narrow).
    """
    policy = policy or TimingPolicy()
    clocks = dict(DEFAULT_CLOCKS, **(clocks or {}))
    names = list(fns)
    if not names:
        raise ConfigError("timing: nothing to time")
    baseline = names[0] if baseline is None else baseline
    if baseline not in fns:
        raise ConfigError(f"timing: baseline {baseline!r} is not one of {', '.join(names)}")
    inner = {n: _calibrate(fns[n], policy, clocks) for n in names}
    raw: dict[str, dict[str, list[float]]] = {n: {CPU: [], WALL: []} for n in names}
    run = Interleaved({}, inner, policy)
    start = time.perf_counter()
    for r in range(policy.max_rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            cpu, wall = _sample(fns[name], inner[name], clocks)
            raw[name][CPU].append(cpu)
            raw[name][WALL].append(wall)
        done = r + 1
        if done < policy.min_rounds:
            continue
        if len(names) == 1:
            run.stopped = "min_rounds"
            break
        if time.perf_counter() - start >= policy.budget_s:
            run.stopped = "budget"
            break
        if (done - policy.min_rounds) % policy.check_every == 0:
            run.samples = {n: {c: np.asarray(v[c]) for c in CLOCKS} for n, v in raw.items()}
            if run.narrow_enough(baseline):
                run.stopped = "narrow"
                break
    else:
        run.stopped = "max_rounds"
    run.samples = {n: {c: np.asarray(v[c]) for c in CLOCKS} for n, v in raw.items()}
    run._cache.clear()
    run.elapsed_s = time.perf_counter() - start
    return run


def compare(baseline: Callable[[], Any], candidate: Callable[[], Any], policy: TimingPolicy | None = None, *,
            clocks: Mapping[str, Clock] | None = None) -> SpeedUp:
    """Time ``candidate`` against ``baseline`` (see :func:`interleave`); the headline :class:`SpeedUp`."""
    run = interleave({"baseline": baseline, "candidate": candidate}, policy, clocks=clocks)
    return run.speedup("baseline", "candidate")


def fixed_rounds(policy: TimingPolicy, rounds: int) -> TimingPolicy:
    """``policy`` with exactly ``rounds`` rounds (no adaptive stopping, no budget)."""
    return replace(policy, min_rounds=rounds, max_rounds=rounds, budget_s=math.inf)


__all__ = ["CLOCKS", "CLOCK_NAMES", "CPU", "DEFAULT_CLOCKS", "Interleaved", "SpeedUp", "TimingPolicy", "WALL",
           "compare", "fixed_rounds", "interleave", "ratio_interval", "spread"]
