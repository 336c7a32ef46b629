"""``report.html``: one self-contained page (inline CSS, figures embedded as base64 PNG)."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Mapping

from fortify.io import write_atomic

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#17702b}.failed{color:#b00020}img{max-width:100%}pre{background:#f6f6f6;padding:.6em;overflow:auto;font-size:.85em}
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return "–"
    return str(v)


def _table(headers: list[str], rows: list[list[Any]], title: str = "") -> str:
    out = [f"<h3>{html.escape(title)}</h3>" if title else "", "<table><tr>"]
    out += [f"<th>{html.escape(str(h))}</th>" for h in headers]
    out.append("</tr>")
    for r in rows:
        cells = "".join(
            f"<td class='num'>{html.escape(_fmt(c))}</td>" if isinstance(c, (int, float)) and not isinstance(c, bool)
            else f"<td>{html.escape(_fmt(c))}</td>" for c in r)
        out.append(f"<tr>{cells}</tr>")
    out.append("</table>")
    return "".join(out)


def _figure(run_dir: Path, rel: str) -> str:
    p = run_dir / rel
    try:
        data = base64.b64encode(p.read_bytes()).decode("ascii")
    except OSError:
        return f"<p>(figure {html.escape(rel)} missing)</p>"
    return f"<figure><img alt='{html.escape(rel)}' src='data:image/png;base64,{data}'>" \
           f"<figcaption>{html.escape(rel)}</figcaption></figure>"


def render_html(report: Mapping[str, Any], run_dir: str | Path) -> str:
    """The HTML page of a report dict (see :func:`fortify.report.build_report`)."""
    run_dir = Path(run_dir)
    status = str(report.get("status"))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>fortify run {html.escape(str(report.get('run_id')))}</title><style>{_CSS}</style></head><body>",
        f"<h1>fortify run <code>{html.escape(str(report.get('run_id')))}</code></h1>",
        f"<p>verb <b>{html.escape(str(report.get('verb')))}</b> · status "
        f"<b class='{html.escape(status)}'>{html.escape(status)}</b> · seed {html.escape(str(report.get('seed')))}</p>",
    ]
    if report.get("error"):
        parts.append(f"<p class='failed'>error: {html.escape(str(report['error']))}</p>")
    rows = [[stage, k, v] for stage, kv in (report.get("metrics") or {}).items() for k, v in kv.items()]
    parts.append("<h2>Metrics</h2>" + (_table(["stage", "metric", "value"], rows) if rows else "<p>none</p>"))
    for sec in report.get("sections") or []:
        parts.append(f"<h2>{html.escape(sec.get('title', ''))}</h2>")
        if sec.get("text"):
            parts.append(f"<p>{html.escape(sec['text'])}</p>")
        for t in sec.get("tables") or []:
            parts.append(_table(t["headers"], t["rows"], t.get("title", "")))
        for f in sec.get("figures") or []:
            parts.append(_figure(run_dir, f))
    arts = [[k, v] for k, v in (report.get("artefacts") or {}).items()]
    if arts:
        parts.append("<h2>Artefacts</h2>" + _table(["name", "path"], arts))
    vers = [[k, v] for k, v in (report.get("versions") or {}).items()]
    parts.append("<h2>Versions</h2>" + _table(["package", "version"], vers))
    parts.append("<h2>Configuration</h2><pre>" + html.escape(json.dumps(report.get("config"), indent=2)) + "</pre>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_html(report: Mapping[str, Any], run_dir: str | Path, name: str = "report.html") -> Path:
    """Render ``report`` and write it to ``run_dir/name`` atomically."""
    return write_atomic(Path(run_dir) / name, render_html(report, run_dir))
