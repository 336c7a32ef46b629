"""``report`` stage: ``report.json`` (with the report card), ``model_card.json``, ``report.html`` and the
figures (training curve; robustness curves of every threat with the evaluation eps marked; certified vs
empirical robust accuracy; size-vs-robust Pareto of every measured model) in the run folder.

The stage reads the earlier stages' typed results and stores the series behind the figures in their
sections' ``data`` (see :mod:`fortify.report.series`), so ``fortify runs compare`` can overlay runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from fortify.pipeline.base import RunContext, register_stage
from fortify.pipeline.results import CertifyResult, CompressResult, ReportResult, RobustnessResult
from fortify.report.sections import Section


@dataclass
class ReportConfig:
    """``report`` section: whether to write the HTML page and the figures."""

    html: bool = True
    figures: bool = True


def _section(ctx: RunContext, stage: str) -> Section | None:
    return next((s for s in ctx.sections if s.stage == stage), None)


def attach_series(ctx: RunContext) -> None:
    """Store the series behind each built-in figure in its section's ``data`` (JSON-able: fractions, eps,
    counts), read from the typed results of the stages that ran."""
    rob = ctx.find("robustness", RobustnessResult)
    sec = _section(ctx, "robustness")
    if rob is not None and sec is not None:
        rep = rob.report
        evaluation = []
        for t in rep.threats:
            norm, _, eps = str(t.threat).partition(":")
            evaluation.append({"threat": str(t.threat), "norm": norm, "eps": float(eps), "n": rob.n,
                               "robust_accuracy": float(t.robust_accuracy)})
        sec.data.update({"curves": [{k: v for k, v in c.to_dict().items()} for c in rob.curves],
                         "evaluation": evaluation, "union": float(rep.robust_accuracy), "n": rob.n,
                         "preset": rob.preset, "attacks": rob.attacks, "flags_fired": list(rep.fired),
                         "clean_accuracy": float(rep.clean_accuracy)})
    cert = ctx.find("certify", CertifyResult)
    sec = _section(ctx, "certify")
    if cert is not None and sec is not None:
        sec.data.update({"curves": [c.as_dict() for c in cert.curves], "threat": str(cert.threat),
                         "norm": cert.threat.norm, "eps": float(cert.threat.eps), "method": cert.method, "n": cert.n,
                         "certified_accuracy": float(cert.certificate.certified_accuracy)})
    comp = ctx.find("compress", CompressResult)
    sec = _section(ctx, "compress")
    if comp is not None and sec is not None:
        n_robust = min(comp.config.n_robust, comp.n_test)
        sec.data.update({"threat": str(comp.config.threat), "points": [
            {"label": m.name, "bytes": m.bytes, "robust": m.robust_acc, "clean": m.clean_acc, "n_robust": n_robust,
             "n_test": comp.n_test, "params": m.params_total} for m in comp.rows]})


def _add_figure(sec: Section, png: Path, run_dir: Path) -> None:
    """Show ``png`` in the section instead of the stage's own figure: recorded in ``data["report_figures"]``
    (``{path, replaces}``) for the page; ``figures`` (what the stage wrote) and the files stay as they are."""
    rel = str(png.relative_to(run_dir)) if png.is_relative_to(run_dir) else str(png)
    own = [f for f in sec.figures if f.startswith(f"{sec.stage}/")]
    sec.data.setdefault("report_figures", []).append({"path": rel, "replaces": own})


@register_stage
class ReportStage:
    """Write report.json (with the report card), model_card.json, report.html and the report's figures."""

    name: ClassVar[str] = "report"
    config_class: ClassVar[type | None] = ReportConfig

    def run(self, ctx: RunContext) -> ReportResult:
        """Attach the figures' series, draw the figures, then write report.json, model_card.json, report.html."""
        from fortify.pipeline.run import write_report_files
        from fortify.report.figures import training_curve
        from fortify.report.series import draw_run_figures

        sec: ReportConfig = ctx.config.section(self.name) or ReportConfig()
        paths: dict[str, Path] = {}
        attach_series(ctx)
        if sec.figures and ctx.history and "training_curve.png" not in ctx.artefacts.values():
            png = training_curve(ctx.history, ctx.path("training_curve.png"))
            if png is not None:
                paths["training_curve"] = ctx.add_artefact("training_curve", png, kind="figure")
                target = next((s for s in ctx.sections if s.stage == "train"), None)
                if target is None:
                    target = ctx.add_section(Section("Training curve"))
                target.figures.append(png.name)
        if sec.figures:
            doc: dict[str, Any] = {"sections": [s.to_dict() for s in ctx.sections]}
            for stage, png in draw_run_figures(doc, ctx.path("report")).items():
                target = _section(ctx, stage)
                if target is not None:
                    _add_figure(target, png, ctx.run_dir)
                    paths[f"{stage}_figure"] = ctx.add_artefact(f"report_{stage}_figure", png, kind="figure")
        paths["report_json"] = ctx.add_artefact("report_json", ctx.path("report.json"), kind="report")
        paths["model_card"] = ctx.add_artefact("model_card", ctx.path("model_card.json"), kind="report")
        if sec.html:
            paths["report_html"] = ctx.add_artefact("report_html", ctx.path("report.html"), kind="report")
        report_json = write_report_files(ctx, status="ok", html=sec.html)
        write_model_card(report_json, paths["model_card"])
        return ReportResult(paths=paths)


def write_model_card(report_json: Path, path: Path) -> Path:
    """``model_card.json`` (RobustBench-style, :func:`fortify.report.card.model_card`) from ``report.json``."""
    import json

    from fortify.report.card import model_card
    from fortify.report.json_report import write_json

    return write_json(model_card(json.loads(report_json.read_text())), path)
