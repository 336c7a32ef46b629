"""The comparison page (``fortify runs compare ... --html PATH``): the runs, the config differences, the
findings side by side with their tests against the baseline, overlaid figures (training, robustness,
certified vs empirical, Pareto of every model of every run) and the differing raw metrics in an appendix.
Figures are written to ``<PATH stem>_figures/`` next to the page and embedded in it (self-contained)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from fortify.io import write_atomic
from fortify.report.html_parts import badge, esc, figure, interval_text, page, table, value_text
from fortify.report.loading import RunReport


def draw_comparison_figures(runs: Sequence[RunReport], names: Sequence[str], out_dir: Path) -> list[tuple[Path, str]]:
    """Overlaid figures of ``runs`` (legend names ``names``) into ``out_dir``: ``[(png, caption)]``."""
    from fortify.report.figures import certified_vs_empirical, pareto_figure, robustness_figure, training_curves
    from fortify.report.series import certified_series, pareto_points, robustness_series

    drawn: list[tuple[Path, str]] = []
    hist = {n: r.report.get("history") or [] for n, r in zip(names, runs)}
    p = training_curves(hist, out_dir / "training.png", title="training curves (line style = run)")
    if p is not None:
        drawn.append((p, "training curves: loss, clean vs robust accuracy, eps schedule of every run"))
    curves: list[dict[str, Any]] = []
    marks: list[dict[str, Any]] = []
    cert: list[dict[str, Any]] = []
    cmarks: list[dict[str, Any]] = []
    points: list[dict[str, Any]] = []
    for n, r in zip(names, runs):
        c, m = robustness_series(r.report, n)
        curves += c
        marks += m
        c, m = certified_series(r.report, n)
        cert += c
        cmarks += m
        points += pareto_points(r.report, n)
    p = robustness_figure(curves, out_dir / "robustness.png", marks=marks, title="robust accuracy vs eps (all runs)")
    if p is not None:
        drawn.append((p, "robustness curves of every run; diamonds: the cascade's figure at the evaluation eps "
                         "(95% interval)"))
    p = certified_vs_empirical(cert, curves, out_dir / "certified_vs_empirical.png", marks=[*cmarks, *marks])
    if p is not None:
        drawn.append((p, "certified (dashed, sound lower bounds) vs attacked (solid, upper bounds) accuracy"))
    p = pareto_figure(points, out_dir / "pareto.png", title="size vs robust accuracy (every model of every run)")
    if p is not None:
        drawn.append((p, "size vs robust accuracy of every measured model (filled: non-dominated)"))
    return drawn


def _finding_cell(f: Mapping[str, Any] | None) -> str:
    if f is None:
        return "\u2013"
    unit = str(f.get("unit") or "")
    iv = interval_text(f.get("interval"), unit)
    out = f"<b>{esc(value_text(f.get('value'), unit))}</b>" + (f"<div class='sub'>{esc(iv)}</div>" if iv != "\u2013" else "")
    if f.get("n"):
        out += f"<div class='sub'>n={esc(f['n'])}</div>"
    if f.get("warning"):
        out += badge("warning", "warn", str(f["warning"]))
    return out


def _test_cell(t: Mapping[str, Any] | None) -> str:
    if not t:
        return ""
    kind = "ok" if t.get("significant") else "info"
    return esc(t["text"]) + (badge("significant", kind) if t.get("significant") else "")


def render_compare_html(cmp: Mapping[str, Any], figures: Sequence[tuple[Path, str]]) -> str:
    """The page of a comparison (``compare_runs``) with the given figures embedded."""
    names = [r["label"] for r in cmp["runs"]]
    body = [f"<h1>fortify \u00b7 comparison of {len(names)} runs</h1>",
            f"<p class='sub'>Each run is tested against the baseline {esc(cmp['baseline'])}: accuracies with the "
            f"two-proportion z-test on their n images (conservative for runs on the same images), other figures by "
            f"disjoint 95% intervals; significant at {cmp['alpha']:g}.</p>"]
    body.append(table(["", "run", "model on data", "status", "evaluation"],
                      [[r["label"], r["run_id"], r["title"], r["status"],
                        (r.get("evaluation") or {}).get("preset") or "\u2013"] for r in cmp["runs"]], "runs"))
    diff = cmp["config_diff"]
    body.append("<h2>Configuration differences</h2>" + (
        table(["key", *names], [[d["key"], *(json.dumps(v, default=str) if isinstance(v, (list, dict)) else v
                                              for v in d["values"])] for d in diff], percent=False)
        if diff else "<p>The configurations are identical (apart from where the files went).</p>"))
    rows = [[esc(row["label"]), *(_finding_cell(f) for f in row["values"]), *(_test_cell(t) for t in row["tests"][1:])]
            for row in cmp["findings"]]
    body.append("<h2>Findings</h2>" + (table(["figure", *names, *(f"{n} vs {names[0]}" for n in names[1:])], rows,
                                             percent=False, raw=True) if rows else "<p>No findings in these runs.</p>"))
    if figures:
        body.append("<h2>Overlaid curves</h2>" + "".join(figure(p, cap) for p, cap in figures))
    mrows = [[d["key"], *d["values"]] for d in cmp["metrics_diff"]]
    body.append("<h2 id='appendix'>Appendix</h2><details><summary>Raw metrics that differ "
                f"({len(mrows)})</summary>" + table(["stage/metric", *names], mrows, percent=False) + "</details>")
    return page("fortify comparison " + " vs ".join(r["run_id"] for r in cmp["runs"]), body)


def write_compare_html(cmp: Mapping[str, Any], runs: Sequence[RunReport], path: str | Path) -> Path:
    """Draw the overlaid figures next to ``path`` (``<stem>_figures/``) and write the page atomically."""
    dest = Path(path)
    names = [r["label"] for r in cmp["runs"]]
    figs = draw_comparison_figures(runs, names, dest.parent / f"{dest.stem}_figures")
    return write_atomic(dest, render_compare_html(cmp, figs))


__all__ = ["draw_comparison_figures", "render_compare_html", "write_compare_html"]
