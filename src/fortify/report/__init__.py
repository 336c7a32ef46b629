"""Run reports: ``report.json`` (config, versions, metrics, artefacts, sections, the report card),
``model_card.json`` (RobustBench-style) and a self-contained ``report.html`` (the card first, one section
per stage, a collapsed appendix with the raw metrics, configuration and versions; print CSS).

Pipeline stages add :class:`Section` objects (text, tables, figures, :class:`Finding` headline figures,
``data`` series) to the run context; the ``report`` stage renders them (:mod:`.card`, :mod:`.html`,
:mod:`.figures`, :mod:`.series`). Runs read back from the store (:mod:`.loading`) are compared by
``fortify runs compare`` (:mod:`.compare`, :mod:`.compare_html`) and ranked by ``fortify leaderboard``
(:mod:`.leaderboard`). The report package never imports the pipeline: it reads a ReportSource
(:mod:`.json_report`) or report dicts. Figures are matplotlib PNGs made with the Agg backend.
"""
from __future__ import annotations

from fortify.report.figures import training_curve
from fortify.report.html import render_html, write_html
from fortify.report.json_report import build_report, jsonable, write_json
from fortify.report.sections import Finding, Section, Table

__all__ = ["Finding", "Section", "Table", "build_report", "jsonable", "write_json", "render_html", "write_html", "training_curve"]
