"""``report.json``: everything measured in a run, machine-readable."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from fortify.io import write_atomic
from fortify.report.sections import Section


def _clean(v: Any) -> Any:
    """JSON-safe copy: NaN/inf become None, tuples lists, unknown objects strings."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if v is None or isinstance(v, (str, int, bool)):
        return v
    if hasattr(v, "item") and callable(v.item):
        try:
            return _clean(v.item())
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(v)


def jsonable(v: Any) -> Any:
    """A JSON-safe copy of ``v`` (NaN/inf -> None, tuples -> lists, tensors/numpy scalars -> numbers)."""
    return _clean(v)


class ReportSource(Protocol):
    """What a report is built from: a finished (or failed) run's context
    (:class:`fortify.pipeline.RunContext` has every attribute; the report never imports the pipeline)."""

    @property
    def run_id(self) -> str:
        """The run's id."""

    @property
    def verb(self) -> str:
        """The verb that made the run."""

    @property
    def versions(self) -> Mapping[str, str]:
        """Package versions of the run."""

    @property
    def metrics(self) -> Mapping[str, Mapping[str, Any]]:
        """``{stage: {key: value}}``, the last value of each key."""

    @property
    def artefacts(self) -> Mapping[str, str]:
        """Files written: name -> path."""

    @property
    def sections(self) -> Sequence[Section]:
        """The stages' report parts, in stage order."""

    @property
    def timing(self) -> Mapping[str, float]:
        """Seconds per stage and ``total``."""

    @property
    def config(self) -> Any:
        """The run's :class:`fortify.config.Config` (``to_dict()``, ``seed``)."""

    @property
    def history(self) -> Sequence[Mapping[str, Any]]:
        """The per-epoch training records (empty without training)."""


def build_report(run: ReportSource, *, status: str, error: str | None = None) -> dict[str, Any]:
    """The report of ``run`` as a JSON-safe dict: ``metrics`` is ``{stage: {key: value}}``, ``history`` the
    per-epoch dicts, ``sections`` the stages' report parts; ``status`` ``ok``/``failed`` with ``error``;
    ``card`` the report card (:func:`fortify.report.card.build_card`: model, data, threats, evaluation,
    every section's findings with a link to it)."""
    from fortify.report.card import build_card

    report = _clean({
        "run_id": run.run_id, "verb": run.verb, "status": status, "error": error, "seed": run.config.seed,
        "config": run.config.to_dict(), "versions": dict(run.versions), "metrics": run.metrics,
        "history": list(run.history), "artefacts": dict(run.artefacts), "timing": dict(run.timing),
        "sections": [s.to_dict() for s in run.sections],
    })
    report["card"] = _clean(build_card(report))
    return report


def write_json(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``report`` (from :func:`build_report`) as indented JSON, atomically."""
    return write_atomic(path, json.dumps(report, indent=2, sort_keys=False, allow_nan=False) + "\n")
