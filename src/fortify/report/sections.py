"""Report building blocks: a :class:`Section` holds text, tables and figure paths from one stage."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Table:
    """A small table: ``headers`` (column names) and ``rows`` (lists of cells, numbers or text)."""

    headers: list[str]
    rows: list[list[Any]]
    title: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return {"title": self.title, "headers": list(self.headers), "rows": [list(r) for r in self.rows]}


@dataclass
class Finding:
    """One headline figure for the report card at the top of ``report.html`` / ``report.json``.

    A stage adds findings to its :class:`Section`; the card shows each with its unit, ``n``, interval
    and a link to the section, and shows ``warning`` (an unreliable figure: a fired sanity flag, a
    noisy latency, a detector that collapses under an adaptive attack) next to it instead of hiding it.

    * ``key``: stable identifier (``robust_accuracy.linf``, ``calibration.ece``), used by comparisons
      and the leaderboard.
    * ``label``: what a reader sees (``Robust accuracy, Linf eps 0.1``).
    * ``value``: a number in ``unit`` (fractions are given as ``unit="%"`` with the value in percent),
      text, or None (not measured).
    * ``interval``: ``(low, high)`` in the same unit (e.g. a binomial 95% interval), or None.
    * ``detail``: how it was measured (preset, method, samples).
    * ``higher_is_better``: direction, None when neither.
    """

    key: str
    label: str
    value: float | int | str | None
    unit: str = ""
    n: int | None = None
    interval: tuple[float, float] | None = None
    detail: str = ""
    warning: str = ""
    higher_is_better: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return {"key": self.key, "label": self.label, "value": self.value, "unit": self.unit, "n": self.n,
                "interval": list(self.interval) if self.interval is not None else None, "detail": self.detail,
                "warning": self.warning, "higher_is_better": self.higher_is_better}


@dataclass
class Section:
    """One part of a report, usually written by one pipeline stage.

    ``figures`` are paths relative to the run folder (PNG files the stage wrote there); ``data`` the
    machine-readable series behind them (curves, measured points) that ``fortify runs compare`` overlays
    across runs (JSON-able values only).
    """

    title: str
    stage: str = ""
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return {"title": self.title, "stage": self.stage, "text": self.text,
                "tables": [t.to_dict() for t in self.tables], "figures": list(self.figures),
                "findings": [f.to_dict() for f in self.findings], "data": dict(self.data)}
