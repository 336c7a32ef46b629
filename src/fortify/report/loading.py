"""Reading finished runs back for comparisons and leaderboards: a run's ``report.json`` (with its card),
or, for a run without one (an older run, a run whose folder moved), a minimal report rebuilt from the
run store's record (config and final metrics, no sections)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fortify.report.card import build_card

if TYPE_CHECKING:  # pragma: no cover
    from fortify.store import RunRecord, RunStore


@dataclass
class RunReport:
    """One run as the comparison and the leaderboard see it: ``report`` is the report dict (``card``
    always present), ``from_file`` whether it came from the run's ``report.json``."""

    run_id: str
    report: dict[str, Any]
    run_dir: Path | None
    status: str
    from_file: bool

    @property
    def card(self) -> dict[str, Any]:
        """The report card (:func:`fortify.report.card.build_card`)."""
        return self.report["card"]


def _from_record(rec: "RunRecord") -> dict[str, Any]:
    metrics: dict[str, dict[str, Any]] = {}
    for m in rec.metrics:
        if m.step is None:
            metrics.setdefault(m.stage or "run", {})[m.key] = m.value
    return {"run_id": rec.id, "verb": rec.verb, "status": rec.status, "error": rec.error, "seed": rec.seed,
            "config": rec.config, "versions": rec.versions, "metrics": metrics, "history": [], "artefacts": {},
            "timing": {}, "sections": []}


def load_run(store: "RunStore", run_id: str) -> RunReport:
    """The run ``run_id`` (id or unique prefix) of ``store`` with its report (the store's record when the
    run folder has no readable ``report.json``)."""
    rec = store.get_run(run_id)
    run_dir = Path(rec.run_dir) if rec.run_dir else None
    report: dict[str, Any] | None = None
    if run_dir is not None and (run_dir / "report.json").is_file():
        try:
            loaded = json.loads((run_dir / "report.json").read_text())
            report = loaded if isinstance(loaded, dict) else None
        except (OSError, ValueError):
            report = None
    from_file = report is not None
    if report is None:
        report = _from_record(rec)
    report.setdefault("run_id", rec.id)
    if "card" not in report:
        report["card"] = build_card(report)
    return RunReport(rec.id, report, run_dir, rec.status, from_file)


__all__ = ["RunReport", "load_run"]
