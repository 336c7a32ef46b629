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
class Section:
    """One part of a report, usually written by one pipeline stage.

    ``figures`` are paths relative to the run folder (PNG files the stage wrote there).
    """

    title: str
    stage: str = ""
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return {"title": self.title, "stage": self.stage, "text": self.text,
                "tables": [t.to_dict() for t in self.tables], "figures": list(self.figures)}
