"""Builders of :class:`~fortify.report.sections.Finding` objects for the built-in stages' headline figures.

An accuracy measured on ``n`` images is a binomial proportion; :func:`accuracy_finding` gives it in
percent with the exact Clopper-Pearson 95% interval (:func:`fortify.stats.proportion_interval`,
Clopper & Pearson 1934). :func:`speedup_finding` states a speed-up only when its interval excludes 1
(else the value is the text ``no significant speed-up``), and marks a noisy or contended timing as a
warning instead of hiding it.
"""
from __future__ import annotations

import math
from typing import Any

from fortify.report.sections import Finding
from fortify.stats import proportion_interval

#: the text shown instead of a ratio whose 95% interval contains 1
NO_SPEEDUP = "no significant speed-up"


_NORM_NAMES = {"linf": "L\u221e", "l2": "L2", "l1": "L1", "l0": "L0"}


def threat_label(threat: Any) -> str:
    """``"linf:0.3"`` (or a ThreatModel) -> ``"L\u221e \u03b5=0.3"``; anything else unchanged."""
    text = str(threat)
    norm, sep, eps = text.partition(":")
    if not sep or norm not in _NORM_NAMES:
        return text
    return f"{_NORM_NAMES[norm]} \u03b5={eps}"


def accuracy_finding(key: str, label: str, rate: float | None, n: int | None, *, detail: str = "",
                     warning: str = "") -> Finding:
    """``rate`` (a fraction in [0, 1] measured on ``n`` images) as a Finding in percent with its exact
    binomial 95% interval; ``value`` None when not measured (``n`` None or 0: no interval)."""
    if rate is None or not math.isfinite(float(rate)):
        return Finding(key, label, None, "%", n, None, detail, warning, True)
    value = 100.0 * float(rate)
    interval = None
    if n:
        k = min(max(int(round(float(rate) * n)), 0), int(n))
        lo, hi = proportion_interval(k, int(n))
        interval = (100.0 * lo, 100.0 * hi)
    return Finding(key, label, round(value, 4), "%", int(n) if n else None, interval, detail, warning, True)


def speedup_finding(key: str, label: str, speedup: Any, *, detail: str = "") -> Finding:
    """A :class:`fortify.timing.SpeedUp` (``ratio``, ``ci_low``/``ci_high``, ``n`` rounds, ``noisy``,
    ``contention``) as a Finding in ``x``: the ratio only when its 95% interval excludes 1, else the text
    :data:`NO_SPEEDUP` (the interval still shown); a noisy or contended timing carries a warning."""
    warning = ""
    if getattr(speedup, "contention", 0.0) > 0:
        warning = (f"not comparable: the multi-threaded run was {speedup.contention:.2g}x slower than one thread "
                   "(contended machine)")
    elif getattr(speedup, "noisy", False):
        warning = "noisy timing: the interleaved medians spread widely; rerun on an idle machine"
    lo, hi = float(speedup.ci_low), float(speedup.ci_high)
    interval = (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None
    significant = interval is not None and (lo > 1.0 or hi < 1.0) and not warning.startswith("not comparable")
    value: float | str = round(float(speedup.ratio), 4) if significant else NO_SPEEDUP
    return Finding(key, label, value, "x" if significant else "", int(speedup.n), interval,
                   detail or f"ratio of medians over {int(speedup.n)} interleaved rounds, paired bootstrap 95% CI",
                   warning, True)


def ratio_finding(key: str, label: str, value: float | None, *, unit: str = "x", detail: str = "",
                  warning: str = "", higher_is_better: bool | None = True) -> Finding:
    """A measured ratio or count without an interval (e.g. an exact file-size ratio)."""
    v = None if value is None or not math.isfinite(float(value)) else round(float(value), 4)
    return Finding(key, label, v, unit, None, None, detail, warning, higher_is_better)


__all__ = ["NO_SPEEDUP", "threat_label", "accuracy_finding", "speedup_finding", "ratio_finding"]
