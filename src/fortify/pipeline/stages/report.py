"""``report`` stage: ``report.json``, ``report.html`` and the training-curve PNG in the run folder."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pathlib import Path

from fortify.pipeline.base import RunContext, register_stage
from fortify.pipeline.results import ReportResult
from fortify.report.sections import Section


@dataclass
class ReportConfig:
    """``report`` section: whether to write the HTML page and the figures."""

    html: bool = True
    figures: bool = True


@register_stage
class ReportStage:
    """Write report.json, report.html and figures (the training curve) into the run folder."""

    name: ClassVar[str] = "report"
    config_class: ClassVar[type | None] = ReportConfig

    def run(self, ctx: RunContext) -> ReportResult:
        """Draw the training curve (if any), then write report.json and report.html."""
        from fortify.pipeline.run import write_report_files
        from fortify.report.figures import training_curve

        sec: ReportConfig = ctx.config.section(self.name) or ReportConfig()
        paths: dict[str, Path] = {}
        if sec.figures and ctx.history and "training_curve.png" not in ctx.artefacts.values():
            png = training_curve(ctx.history, ctx.path("training_curve.png"))
            if png is not None:
                paths["training_curve"] = ctx.add_artefact("training_curve", png, kind="figure")
                target = next((s for s in ctx.sections if s.stage == "train"), None)
                if target is None:
                    target = ctx.add_section(Section("Training curve"))
                target.figures.append(png.name)
        paths["report_json"] = ctx.add_artefact("report_json", ctx.path("report.json"), kind="report")
        if sec.html:
            paths["report_html"] = ctx.add_artefact("report_html", ctx.path("report.html"), kind="report")
        write_report_files(ctx, status="ok", html=sec.html)
        return ReportResult(paths=paths)
