"""Building blocks shared by every fortify HTML page (run report, comparison, leaderboard): the style
sheet (screen and print), escaping, number formatting, tables, embedded figures, warning badges.

Pages are self-contained: inline CSS, PNG figures embedded as base64, no external request. Long names
wrap (``overflow-wrap: break-word``) and wide tables scroll inside their own box, so the page never
overflows horizontally; ``@media print`` drops the navigation, opens collapsed parts and avoids
breaking figures and table rows across pages.
"""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any, Sequence

CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;margin:1.5em auto;
 padding:0 1.2em;color:#1d2329;line-height:1.45;overflow-wrap:break-word}
h1{font-size:1.55em;margin:.2em 0}h2{font-size:1.25em;border-bottom:2px solid #e3e6ea;padding-bottom:.2em;
 margin-top:1.8em}h3{font-size:1.02em;margin:1.1em 0 .3em}
.sub{color:#5b6670;font-size:.92em}code{font-size:.92em;background:#f1f3f5;padding:0 .25em;border-radius:3px}
.tablewrap{overflow-x:auto;max-width:100%;margin:.5em 0}
table{border-collapse:collapse;font-size:.9em;min-width:40%}
th,td{border:1px solid #d6dbe0;padding:.3em .6em;text-align:left;vertical-align:top;overflow-wrap:break-word}
td.nw{white-space:nowrap}
th{background:#f3f5f7;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.warn td{background:#fff8e6}
.card{border:1px solid #cfd6dd;border-radius:8px;padding:1em 1.2em;background:#fbfcfd;margin:1em 0}
.card h2{margin-top:.2em;border:none}
.facts{display:grid;grid-template-columns:repeat(auto-fit,minmax(230px,1fr));gap:.6em 1.2em;margin:.4em 0 1em}
.facts div{min-width:0}.facts b{display:block;font-size:.78em;text-transform:uppercase;letter-spacing:.04em;
 color:#5b6670}
.big{font-size:1.15em;font-weight:600;white-space:nowrap}
.badge{display:inline-block;font-size:.78em;font-weight:600;padding:.05em .5em;border-radius:1em;margin-left:.3em;
 white-space:nowrap}
.badge.warn{background:#ffe8b3;color:#6b4500}.badge.ok{background:#d9f2df;color:#17592a}
.badge.bad{background:#fbd9dc;color:#8a1020}.badge.info{background:#e1ecf8;color:#1c4a7a}
.warning{color:#6b4500;font-size:.88em;margin-top:.15em}
.ok{color:#17702b}.failed{color:#b00020}
.error{border:1px solid #e8a3ab;background:#fdf0f1;padding:.6em 1em;border-radius:6px}
figure{margin:1em 0;break-inside:avoid}figure img{max-width:100%;height:auto;border:1px solid #e3e6ea}
figcaption{font-size:.85em;color:#5b6670}
nav.toc{font-size:.9em;margin:.8em 0}nav.toc a{margin-right:.9em;overflow-wrap:anywhere}
details{margin:1em 0;border:1px solid #e3e6ea;border-radius:6px;padding:.4em .9em}
summary{cursor:pointer;font-weight:600}
pre{background:#f6f7f9;padding:.6em;overflow:auto;font-size:.82em;white-space:pre-wrap;overflow-wrap:anywhere}
.missing{color:#b00020}
@media print{body{max-width:none;margin:0;font-size:10.5pt}nav.toc{display:none}
 .card{break-inside:avoid}tr,figure,img{break-inside:avoid}a{color:inherit;text-decoration:none}
 details{border:none;padding:0}details>summary{list-style:none}h2{break-after:avoid}}
"""

#: opens every <details> before printing (print CSS cannot open them)
PRINT_SCRIPT = ("<script>window.addEventListener('beforeprint',function(){"
                "document.querySelectorAll('details').forEach(function(d){d.open=true;});});</script>")


def esc(v: Any) -> str:
    """HTML-escape ``str(v)``."""
    return html.escape(str(v), quote=True)


def is_num(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def fmt(v: Any) -> str:
    """A cell's text: ``-`` for None, thousands separators for ints, 4 significant digits for floats."""
    if v is None:
        return "\u2013"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.4g}"
    return str(v)


def value_text(value: Any, unit: str) -> str:
    """``75.2%``, ``13.16x smaller``, ``no significant speed-up``, ``0.41 l2``."""
    if value is None:
        return "not measured"
    if not is_num(value):
        return str(value)
    num = f"{float(value):.2f}" if unit == "%" or unit.startswith("x") else fmt(value)
    if not unit:
        return num
    return f"{num}{unit}" if unit in ("%", "x") or unit.startswith("x ") else f"{num} {unit}"


def interval_text(interval: Sequence[Any] | None, unit: str) -> str:
    """``71.2\u201378.9%`` or ``\u2013``."""
    if not interval or len(interval) != 2 or not all(is_num(v) for v in interval):
        return "\u2013"
    lo, hi = float(interval[0]), float(interval[1])
    u = unit if unit in ("%", "x") else f" {unit}" if unit else ""
    if unit == "%":
        return f"{lo:.1f}\u2013{hi:.1f}{u}"
    if unit == "x" or unit.startswith("x ") or not unit:
        return f"{lo:.2f}\u2013{hi:.2f}{u}"
    return f"{fmt(lo)}\u2013{fmt(hi)}{u}"


def badge(text: str, kind: str = "warn", title: str = "") -> str:
    """A small coloured label (``warn``, ``ok``, ``bad``, ``info``)."""
    tip = f" title='{esc(title)}'" if title else ""
    return f"<span class='badge {esc(kind)}'{tip}>{esc(text)}</span>"


#: raw keys some stages use as column headers, and what a reader sees
HEADER_LABELS = {
    "train_loss": "train loss", "val_loss": "validation loss", "train_acc": "train accuracy",
    "val_acc": "clean accuracy (validation)", "adv_acc": "adversarial train accuracy", "lr": "learning rate",
    "wall_s": "epoch time (s)", "clean_acc": "clean accuracy (monitor)", "robust_acc": "robust accuracy (monitor)",
    "eps": "training eps", "steps": "attack steps", "grad_evals": "gradient evaluations", "monitor_s": "monitor time (s)",
    "train_wall_s": "train time (s)", "samples": "samples", "rolled_back": "rolled back",
}


def human(header: Any) -> str:
    """A column header as a reader sees it (``train_loss`` -> ``train loss``; text with spaces unchanged)."""
    text = str(header)
    if text in HEADER_LABELS:
        return HEADER_LABELS[text]
    if " " not in text and "_" in text:
        text = text.replace("_", " ")
        return text[:-2] + " (s)" if text.endswith(" s") else text
    return text


def _percent_columns(headers: Sequence[Any], rows: Sequence[Sequence[Any]]) -> set[int]:
    """Columns holding accuracies as fractions (header says accuracy/rate, every number in [0, 1])."""
    out = set()
    for j, h in enumerate(headers):
        name = str(h).lower()
        if ("accuracy" in name or name == "agreement") and "%" not in name:
            vals = [r[j] for r in rows if j < len(r) and is_num(r[j])]
            if vals and all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in vals):
                out.add(j)
    return out


def table(headers: Sequence[Any], rows: Sequence[Sequence[Any]], title: str = "", *,
          percent: bool = True, row_classes: Sequence[str] | None = None, raw: bool = False,
          nowrap: Sequence[int] = ()) -> str:
    """An HTML table in a horizontally scrolling box; fraction-valued accuracy columns shown in % (header
    marked ``(%)``) unless ``percent`` is False; ``raw`` cells are inserted unescaped (trusted HTML); columns
    in ``nowrap`` never wrap (values, intervals)."""
    headers = [human(h) for h in headers]
    pct = _percent_columns(headers, rows) if percent else set()
    out = [f"<h3>{esc(title)}</h3>" if title else "", "<div class='tablewrap'><table><thead><tr>"]
    out += [f"<th>{esc(h)}{' (%)' if j in pct else ''}</th>" for j, h in enumerate(headers)]
    out.append("</tr></thead><tbody>")
    for i, r in enumerate(rows):
        cls = f" class='{esc(row_classes[i])}'" if row_classes and row_classes[i] else ""
        cells = []
        for j, c in enumerate(r):
            text = f"{100 * float(c):.2f}" if j in pct and is_num(c) else fmt(c)
            body = str(c) if raw and isinstance(c, str) else esc(text)
            cls_ = "num" if is_num(c) else "nw" if j in nowrap else ""
            cells.append(f"<td class='{cls_}'>{body}</td>" if cls_ else f"<td>{body}</td>")
        out.append(f"<tr{cls}>{''.join(cells)}</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def figure(path: Path, caption: str) -> str:
    """``path`` (a PNG) embedded as base64 with a caption; a visible note when it cannot be read."""
    try:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        return f"<p class='missing'>(figure {esc(caption)} missing)</p>"
    return (f"<figure><img alt='{esc(caption)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def page(title: str, body: Sequence[str]) -> str:
    """A complete self-contained HTML document."""
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n" + "\n".join(body)
            + f"\n{PRINT_SCRIPT}</body></html>\n")


__all__ = ["CSS", "PRINT_SCRIPT", "HEADER_LABELS", "human", "esc", "is_num", "fmt", "value_text", "interval_text", "badge", "table", "figure",
           "page"]
