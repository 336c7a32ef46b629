"""Run reports: ``report.json`` (config, versions, metrics, artefacts, sections) and a minimal
self-contained ``report.html`` (metric tables and figures, PNGs embedded and also written next to it).

Pipeline stages add :class:`Section` objects (tables, figures, notes) to the run context; the
``report`` stage renders them. Figures are matplotlib PNGs made with the Agg backend.
"""
from __future__ import annotations

from fortify.report.figures import training_curve
from fortify.report.html import render_html, write_html
from fortify.report.json_report import build_report, jsonable, write_json
from fortify.report.sections import Finding, Section, Table

__all__ = ["Finding", "Section", "Table", "build_report", "jsonable", "write_json", "render_html", "write_html", "training_curve"]
