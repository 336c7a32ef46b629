"""``report.html``: one self-contained page a researcher would show a colleague.

Layout: the **report card** first (model, data, threat models, the evaluation and whether it meets the
bar, then every section's findings: value with unit, 95% interval, n, how measured, a link to the
section, and a warning badge on an unreliable figure), a table of contents, one **section per stage**
(text, tables with human labels and units, figures) and a collapsed **appendix** with the raw metrics,
files, timings, versions and configuration. Inline CSS (screen and print), figures embedded as base64.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from fortify.io import write_atomic
from fortify.report.card import build_card, section_anchor
from fortify.report.html_parts import badge, esc, figure, fmt, interval_text, page, table, value_text


#: captions of the figures the built-in stages and the report stage draw (others show their path)
FIGURE_CAPTIONS = {
    "training_curve.png": "Training: loss, clean vs robust accuracy and the eps schedule per epoch",
    "report/robustness.png": "Robust accuracy vs eps for every threat (curves: minimal-perturbation attacks on the "
                             "curve images; diamonds: the cascade's figure at the evaluation eps, 95% interval)",
    "report/certified_vs_empirical.png": "Certified accuracy (dashed, a sound lower bound) and attacked robust accuracy "
                                         "(solid, an upper bound) on one axis; the truth lies between them",
    "report/pareto.png": "Artefact size vs robust accuracy of every model measured in this run (95% intervals; "
                         "filled: not dominated by a smaller and more robust model)",
}


def _findings_rows(findings: list[Mapping[str, Any]], *, link: bool = True) -> tuple[list[list[Any]], list[str]]:
    rows, classes = [], []
    for f in findings:
        label = esc(f.get("label", f.get("key", "")))
        if f.get("warning"):
            label += badge("warning", "warn", str(f["warning"])) + f"<div class='warning'>\u26a0 {esc(f['warning'])}</div>"
        where = (f"<a href='#{esc(f['section'])}'>{esc(f.get('section_title') or 'section')}</a>"
                 if link and f.get("section") else esc(f.get("section_title", "")))
        unit = str(f.get("unit") or "")
        rows.append([label, f"<span class='big'>{esc(value_text(f.get('value'), unit))}</span>",
                     esc(interval_text(f.get("interval"), unit)), esc(fmt(f.get("n"))), esc(f.get("detail", "")), where])
        classes.append("warn" if f.get("warning") else "")
    return rows, classes


def _facts(card: Mapping[str, Any]) -> str:
    model, data = card.get("model") or {}, card.get("data") or {}
    params = f" \u00b7 {model['params']:,} parameters" if model.get("params") else ""
    threats = "".join(f"<div>{esc(t['label'])} <span class='sub'>({esc(', '.join(t['used_by']))})</span></div>"
                      for t in card.get("threats") or []) or "none"
    ev = card.get("evaluation")
    if ev is None:
        evaluation = "no attack evaluation in this run"
    else:
        how = f"preset <code>{esc(ev['preset'])}</code>" if ev.get("preset") else \
            f"custom cascade <code>{esc(', '.join(ev.get('attacks') or []))}</code>"
        mark = badge("meets the evaluation bar", "ok", ev["bar"]) if ev["meets_bar"] else \
            badge("below the evaluation bar", "warn", ev["bar"])
        why = "" if ev["meets_bar"] else f"<div class='warning'>{esc('; '.join(ev['why_not']))}</div>"
        evaluation = f"{how}, n={esc(fmt(ev.get('n')))} {mark}{why}"
    return ("<div class='facts'>"
            f"<div><b>Model</b>{esc(model.get('name'))}{esc(params)}"
            f"<div class='sub'>{esc(model.get('training') or '')}</div></div>"
            f"<div><b>Data</b>{esc(data.get('name'))}"
            + (f"<div class='sub'>{esc(fmt(data['test_images']))} test images</div>" if data.get("test_images") else "")
            + f"</div><div><b>Threat models</b>{threats}</div><div><b>Robustness evaluation</b>{evaluation}</div></div>")


def render_card(card: Mapping[str, Any]) -> str:
    """The report card block (``card`` from :func:`fortify.report.card.build_card`)."""
    findings = list(card.get("findings") or [])
    warn = card.get("warnings", 0)
    head = (f"<section class='card' id='card'><h2>Report card: {esc(card.get('title', ''))}"
            + (badge(f"{warn} warning{'s' if warn != 1 else ''}", "warn") if warn else "") + "</h2>" + _facts(card))
    if not findings:
        return head + "<p class='sub'>No headline figures were measured in this run.</p></section>"
    rows, classes = _findings_rows(findings)
    return head + table(["figure", "value", "95% interval", "n", "how measured", "section"], rows,
                        percent=False, row_classes=classes, raw=True, nowrap=(1, 2, 3)) + \
        "<p class='sub'>Accuracies: exact binomial (Clopper-Pearson) 95% intervals over the n images. A speed-up " \
        "is stated only when its 95% interval excludes 1.</p></section>"


def _section(i: int, sec: Mapping[str, Any], run_dir: Path) -> str:
    parts = [f"<section id='{esc(section_anchor(i, sec))}'><h2>{esc(sec.get('title', ''))}</h2>"]
    if sec.get("text"):
        parts.append(f"<p>{esc(sec['text'])}</p>")
    if sec.get("findings"):
        rows, classes = _findings_rows([dict(f) for f in sec["findings"]], link=False)
        parts.append(table(["figure", "value", "95% interval", "n", "how measured"],
                           [r[:5] for r in rows], "headline figures", percent=False, row_classes=classes,
                           raw=True, nowrap=(1, 2, 3)))
    for t in sec.get("tables") or []:
        parts.append(table(t.get("headers") or [], t.get("rows") or [], t.get("title", "")))
    extra = [e for e in (sec.get("data") or {}).get("report_figures") or [] if isinstance(e, Mapping)]
    replaced = {str(r) for e in extra for r in e.get("replaces") or []}
    for f in [f for f in sec.get("figures") or [] if f not in replaced] + [str(e["path"]) for e in extra]:
        parts.append(figure(run_dir / f, FIGURE_CAPTIONS.get(f, f)))
    parts.append("</section>")
    return "".join(parts)


def _appendix(report: Mapping[str, Any]) -> str:
    rows = [[stage, k, v] for stage, kv in (report.get("metrics") or {}).items() for k, v in (kv or {}).items()]
    arts = [[k, v] for k, v in (report.get("artefacts") or {}).items()]
    timing = [[k, round(float(v), 2)] for k, v in (report.get("timing") or {}).items() if v is not None]
    vers = [[k, v] for k, v in (report.get("versions") or {}).items()]
    return ("<h2 id='appendix'>Appendix</h2>"
            "<details><summary>Raw metrics (every logged key, last value)</summary>"
            + (table(["stage", "metric", "value"], rows, percent=False) if rows else "<p>none</p>") + "</details>"
            + "<details><summary>Files written</summary>" + table(["name", "path"], arts) + "</details>"
            + "<details><summary>Time per stage (s)</summary>" + table(["stage", "seconds"], timing) + "</details>"
            + "<details><summary>Versions</summary>" + table(["package", "version"], vers) + "</details>"
            + "<details><summary>Configuration</summary><pre>" + esc(json.dumps(report.get("config"), indent=2))
            + "</pre></details>")


def render_html(report: Mapping[str, Any], run_dir: str | Path) -> str:
    """The HTML page of a report dict (see :func:`fortify.report.build_report`); figures are read from
    ``run_dir`` (paths relative to it) and embedded."""
    run_dir = Path(run_dir)
    status = str(report.get("status"))
    card = report.get("card") or build_card(report)
    sections = list(report.get("sections") or [])
    body = [f"<header><h1>fortify report \u00b7 {esc(card.get('title', ''))}</h1>"
            f"<p class='sub'>run <code>{esc(report.get('run_id'))}</code> \u00b7 verb <b>{esc(report.get('verb'))}</b>"
            f" \u00b7 status <b class='{esc(status)}'>{esc(status)}</b> \u00b7 seed {esc(report.get('seed'))}</p></header>"]
    if report.get("error"):
        body.append(f"<p class='error failed'>error: {esc(report['error'])}</p>")
    body.append(render_card(card))
    links = [f"<a href='#{esc(section_anchor(i, s))}'>{esc(s.get('title', ''))}</a>" for i, s in enumerate(sections)]
    body.append("<nav class='toc'>Sections: " + "".join(links) + "<a href='#appendix'>Appendix</a></nav>")
    body += [_section(i, s, run_dir) for i, s in enumerate(sections)]
    body.append(_appendix(report))
    return page(f"fortify run {report.get('run_id')}", body)


def write_html(report: Mapping[str, Any], run_dir: str | Path, name: str = "report.html") -> Path:
    """Render ``report`` and write it to ``run_dir/name`` atomically."""
    return write_atomic(Path(run_dir) / name, render_html(report, run_dir))
