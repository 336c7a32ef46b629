"""The series behind the report's figures, read from a report dict (``report.json``: each section's
``data``), so one run's page and a comparison of several runs draw the same figures.

A built-in section's ``data`` (filled by the ``report`` stage from the stages' typed results):

* ``robustness``: ``curves`` (``{label, norm, eps, accuracy, checks}``), ``evaluation``
  (``{threat, norm, eps, robust_accuracy, n}`` per threat), ``union``, ``preset``, ``flags_fired``.
* ``certify``: ``curves`` (``{method, norm, eps, accuracy, n}``), ``threat``, ``norm``, ``eps``,
  ``certified_accuracy``, ``n``, ``method``.
* ``compress``: ``points`` (``{label, bytes, robust, clean, n_robust}``, fractions), ``threat``.

and ``report_figures`` (``{path, replaces}``): the report's figure shown on the page instead of the
stage's own one (the stage's ``figures`` list and files are left as the stage wrote them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from fortify.stats import proportion_interval


def section_data(report: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """The ``data`` of the first section written by ``stage`` (empty when absent)."""
    for s in report.get("sections") or []:
        if s.get("stage") == stage and s.get("data"):
            return dict(s["data"])
    return {}


def interval_pct(rate: float, n: int | None) -> tuple[float | None, float | None]:
    """Exact binomial 95% interval of ``rate`` on ``n`` images, in % (None, None without ``n``)."""
    if not n:
        return None, None
    k = min(max(int(round(rate * n)), 0), int(n))
    lo, hi = proportion_interval(k, int(n))
    return 100 * lo, 100 * hi


def _mark(value: float, n: int | None, norm: str, eps: float, label: str, group: str, marker: str) -> dict[str, Any]:
    lo, hi = interval_pct(value, n)
    return {"norm": norm, "eps": eps, "value": 100 * value, "low": lo, "high": hi, "label": label, "group": group,
            "marker": marker}


def robustness_series(report: Mapping[str, Any], group: str = "") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(curves, marks)`` of a report's robustness section: every accuracy-vs-eps curve and, per threat,
    the cascade's figure at the evaluation eps with its 95% interval."""
    d = section_data(report, "robustness")
    tag = f"{group}: " if group else ""
    curves = [{**c, "label": tag + str(c.get("label") or c.get("norm")), "group": group} for c in d.get("curves") or []]
    how = d.get("preset") or "custom cascade"
    marks = [_mark(float(e["robust_accuracy"]), e.get("n"), e["norm"], float(e["eps"]),
                   f"{tag}cascade ({how}) at {e['threat']}", group, "D")
             for e in d.get("evaluation") or [] if e.get("robust_accuracy") is not None]
    return curves, marks


def certified_series(report: Mapping[str, Any], group: str = "") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(certified curves, marks)``: each certifier's curve and its figure at the certified threat."""
    d = section_data(report, "certify")
    tag = f"{group}: " if group else ""
    curves = [{**c, "label": tag + str(c.get("method")), "group": group} for c in d.get("curves") or []]
    marks = []
    if d.get("certified_accuracy") is not None and d.get("norm"):
        marks.append(_mark(float(d["certified_accuracy"]), d.get("n"), d["norm"], float(d["eps"]),
                           f"{tag}certified ({d.get('method')}) at {d.get('threat')}", group, "s"))
    return curves, marks


def pareto_points(report: Mapping[str, Any], group: str = "") -> list[dict[str, Any]]:
    """Every model the compress stage measured: ``{label, bytes, robust (%), low, high, group}``."""
    d = section_data(report, "compress")
    out = []
    for p in d.get("points") or []:
        if p.get("robust") is None or not p.get("bytes"):
            continue
        lo, hi = interval_pct(float(p["robust"]), p.get("n_robust"))
        out.append({"label": f"{group}: {p['label']}" if group else p["label"], "bytes": p["bytes"],
                    "robust": 100 * float(p["robust"]), "low": lo, "high": hi, "group": group})
    return out


def draw_run_figures(report: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Draw one run's figures from its report dict into ``out_dir``: ``robustness`` (every threat, the
    evaluation eps marked), ``certify`` (certified vs empirical on one axis), ``compress`` (Pareto of
    every measured model). Returns ``{stage: png}`` for the figures drawn."""
    from fortify.report.figures import certified_vs_empirical, pareto_figure, robustness_figure

    out = Path(out_dir)
    drawn: dict[str, Path] = {}
    curves, marks = robustness_series(report)
    n = (section_data(report, "robustness").get("evaluation") or [{}])[0].get("n")
    p = robustness_figure(curves, out / "robustness.png", marks=marks,
                          title="robust accuracy vs eps" + (f" (cascade on {n} images)" if n else ""))
    if p is not None:
        drawn["robustness"] = p
    cert, cmarks = certified_series(report)
    p = certified_vs_empirical(cert, curves, out / "certified_vs_empirical.png", marks=[*cmarks, *marks])
    if p is not None:
        drawn["certify"] = p
    pts = pareto_points(report)
    thr = section_data(report, "compress").get("threat")
    p = pareto_figure(pts, out / "pareto.png", title="size vs robust accuracy" + (f" ({thr})" if thr else ""))
    if p is not None:
        drawn["compress"] = p
    return drawn


__all__ = ["section_data", "interval_pct", "robustness_series", "certified_series", "pareto_points",
           "draw_run_figures"]
