"""Report figures, drawn with matplotlib's Agg backend (no display needed), from plain data (the series
stored in ``report.json``), so a comparison of runs draws the same figures with several runs overlaid.

* :func:`training_curve` / :func:`training_curves`: loss, clean vs robust accuracy and the eps / attack-steps
  schedule per epoch (one or several runs).
* :func:`robustness_figure`: accuracy-vs-eps curves of every threat (one panel per norm, all runs), the
  evaluation eps marked with the cascade's figure and its 95% interval.
* :func:`certified_vs_empirical`: certified accuracy (a sound lower bound) and the attacks' robust accuracy
  (an upper bound) against the radius on one axis: the gap between them is what is not known.
* :func:`pareto_figure`: artefact size vs robust accuracy of every measured model (error bars: 95%
  intervals), non-dominated models filled, dominated hollow; the staircase front only from 3 models up.

Curves are dicts ``{"label", "norm", "eps": [...], "accuracy": [...]}`` with accuracies as fractions.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from fortify.plotting import pyplot, save_figure

#: history keys and the line they become: (panel, label)
_TRAIN_KEYS: dict[str, tuple[str, str]] = {
    "train_loss": ("loss", "train loss"), "val_loss": ("loss", "validation loss"),
    "train_acc": ("accuracy", "train (on training inputs)"), "val_acc": ("accuracy", "clean (validation)"),
    "clean_acc": ("accuracy", "clean (monitor)"), "robust_acc": ("accuracy", "robust (monitor attack)"),
    "eps": ("schedule", "training eps"),
}
_SKIP = {"epoch", "adv_acc"}  # adv_acc repeats train_acc for adversarial tasks
_STYLES = ["-", "--", ":", "-."]


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _panel_of(key: str) -> tuple[str, str] | None:
    if key in _TRAIN_KEYS:
        return _TRAIN_KEYS[key]
    if key in _SKIP:
        return None
    if "loss" in key:
        return "loss", key.replace("_", " ")
    if "acc" in key:
        return "accuracy", key.replace("_", " ")
    return None


def training_curve(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path | None:
    """Plot one run's per-epoch records (``Trainer.fit``'s history) to a PNG: losses, clean vs robust
    accuracy, and the eps schedule when the task ramps one. Returns the path, or ``None`` when there is
    nothing to plot (no loss or accuracy key)."""
    return training_curves({"": history}, path)


def training_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, *,
                    title: str = "training curves") -> Path | None:
    """Overlay the training histories of several runs (``{run label: history}``; one line style per run,
    one colour per quantity). Panels: loss, accuracy (clean and robust, in %), schedule (eps). ``None``
    when no run has a loss or accuracy key."""
    panels: dict[str, list[tuple[str, str, list[float], list[float], int]]] = {}
    for r, (run, history) in enumerate(runs.items()):
        if not history:
            continue
        xs = [float(h["epoch"]) if _numeric(h.get("epoch")) else float(i + 1) for i, h in enumerate(history)]
        keys = dict.fromkeys(k for h in history for k in h)
        for k in keys:
            where = _panel_of(k)
            pts = [(x, float(h[k])) for x, h in zip(xs, history) if _numeric(h.get(k))]
            if where is None or not pts:
                continue
            panel, label = where
            scale = 100.0 if panel == "accuracy" else 1.0
            panels.setdefault(panel, []).append((label, run, [p[0] for p in pts], [scale * p[1] for p in pts], r))
    if not any(p in panels for p in ("loss", "accuracy")):
        return None
    order = [p for p in ("loss", "accuracy", "schedule") if p in panels]
    fig, axes = pyplot().subplots(1, len(order), figsize=(4.0 * len(order), 3.3), squeeze=False)
    for ax, panel in zip(axes[0], order):
        colours: dict[str, Any] = {}
        for label, run, x, y, r in panels[panel]:
            colour = colours.setdefault(label, f"C{len(colours) % 10}")
            ax.plot(x, y, _STYLES[r % len(_STYLES)], color=colour, marker="o", markersize=2.5,
                    label=f"{label} · {run}" if run else label)
        ax.set_xlabel("epoch")
        ax.set_ylabel({"loss": "loss", "accuracy": "accuracy (%)", "schedule": "eps"}[panel])
        if panel == "accuracy":
            ax.set_ylim(-2, 102)
        ax.set_title(panel, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def _norms(series: Sequence[Mapping[str, Any]]) -> list[str]:
    order = ["linf", "l2", "l1", "l0"]
    found = list(dict.fromkeys(str(s.get("norm", "")) for s in series))
    return sorted(found, key=lambda n: order.index(n) if n in order else len(order))


def _marks(ax: Any, marks: Sequence[Mapping[str, Any]], norm: str, colour_of: Mapping[str, str]) -> None:
    """Evaluation points: a vertical line at each evaluation eps, the figure with its 95% interval."""
    for m in marks:
        if m.get("norm") != norm or not _numeric(m.get("eps")):
            continue
        eps = float(m["eps"])
        ax.axvline(eps, color="grey", lw=0.8, ls=":")
        if _numeric(m.get("value")):
            v = float(m["value"])
            lo, hi = m.get("low"), m.get("high")
            err = [[v - float(lo or 0)], [float(hi or 0) - v]] if _numeric(lo) and _numeric(hi) else None
            ax.errorbar([eps], [v], yerr=err, fmt=m.get("marker", "D"), color=colour_of.get(str(m.get("group", "")), "k"),
                        capsize=3, markersize=5, zorder=4, label=str(m.get("label", f"evaluation eps {eps:g}")))


def robustness_figure(series: Sequence[Mapping[str, Any]], path: str | Path, *,
                      marks: Sequence[Mapping[str, Any]] = (), title: str = "robust accuracy vs eps") -> Path | None:
    """Robust accuracy (%) against eps for every curve in ``series`` (one panel per norm, several threats
    and runs per panel, fixed-eps cross-checks as crosses); ``marks`` (``{norm, eps, value, low, high,
    label, group}``, values in %) draw each evaluation eps and its cascade figure. ``None`` without curves."""
    series = [s for s in series if s.get("eps") and s.get("accuracy")]
    if not series:
        return None
    norms = _norms(series)
    fig, axes = pyplot().subplots(1, len(norms), figsize=(4.6 * len(norms), 3.6), squeeze=False)
    groups = list(dict.fromkeys(str(s.get("group", "")) for s in series))
    colour_of = {g: f"C{i % 10}" for i, g in enumerate(groups)}
    for ax, norm in zip(axes[0], norms):
        for s in series:
            if s.get("norm") != norm:
                continue
            colour = colour_of[str(s.get("group", ""))]
            ax.plot(s["eps"], [100 * a for a in s["accuracy"]], color=colour, label=str(s.get("label") or norm))
            checks = s.get("checks") or []
            pts = [(c["eps"], c.get("acc_combined")) for c in checks if _numeric(c.get("acc_combined"))]
            if pts:
                ax.scatter([p[0] for p in pts], [100 * p[1] for p in pts], color=colour, marker="x", zorder=3)
        _marks(ax, marks, norm, colour_of)
        ax.set_xlabel(f"eps ({norm})")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def certified_vs_empirical(certified: Sequence[Mapping[str, Any]], empirical: Sequence[Mapping[str, Any]],
                           path: str | Path, *, marks: Sequence[Mapping[str, Any]] = (),
                           title: str = "certified vs empirical robust accuracy") -> Path | None:
    """Certified accuracy curves (dashed: sound lower bounds) and the attacks' robust-accuracy curves
    (solid: upper bounds) of the same norms on one axis per norm, in %. ``None`` without certified curves."""
    certified = [c for c in certified if c.get("eps")]
    if not certified:
        return None
    norms = _norms(certified)
    fig, axes = pyplot().subplots(1, len(norms), figsize=(5.2 * len(norms), 3.7), squeeze=False)
    groups = list(dict.fromkeys(str(s.get("group", "")) for s in [*certified, *empirical]))
    colour_of = {g: f"C{i % 10}" for i, g in enumerate(groups)}
    for ax, norm in zip(axes[0], norms):
        top = max(max(c["eps"]) for c in certified if c.get("norm") == norm)
        for i, c in enumerate(x for x in certified if x.get("norm") == norm):
            ax.plot(c["eps"], [100 * a for a in c["accuracy"]], _STYLES[1 + i % 3], marker="s", markersize=3,
                    color=colour_of[str(c.get("group", ""))], label=f"certified: {c.get('label') or c.get('method')}")
        for e in empirical:
            if e.get("norm") != norm or not e.get("eps"):
                continue
            pts = list(zip(e["eps"], e["accuracy"]))
            top = max(top, max(x for x, _ in pts))
            if pts:
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "-", color=colour_of[str(e.get("group", ""))],
                        label=f"attacks: {e.get('label') or norm}")
        _marks(ax, marks, norm, colour_of)
        ax.set_xlim(-0.02 * top, 1.05 * max([top, *(float(m["eps"]) for m in marks if m.get("norm") == norm)]))
        ax.set_xlabel(f"radius eps ({norm})")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def pareto_front(points: Sequence[Mapping[str, Any]]) -> list[int]:
    """Indices of the non-dominated points (smaller ``bytes`` and higher ``robust`` are better; a point is
    dominated when another is at least as good in both and better in one)."""
    keep = []
    for i, p in enumerate(points):
        dominated = any(q["bytes"] <= p["bytes"] and q["robust"] >= p["robust"]
                        and (q["bytes"] < p["bytes"] or q["robust"] > p["robust"])
                        for j, q in enumerate(points) if j != i)
        if not dominated:
            keep.append(i)
    return keep


def pareto_figure(points: Sequence[Mapping[str, Any]], path: str | Path, *,
                  title: str = "size vs robust accuracy") -> Path | None:
    """Every model of ``points`` (``{label, bytes, robust (%), low, high, group}``) on log size vs robust
    accuracy with its 95% interval; non-dominated models filled, dominated hollow; the staircase front is
    drawn only when at least 3 models are on it (two points are a comparison, not a front)."""
    pts = [p for p in points if _numeric(p.get("bytes")) and _numeric(p.get("robust")) and p["bytes"] > 0]
    if not pts:
        return None
    front = set(pareto_front(pts))
    groups = list(dict.fromkeys(str(p.get("group", "")) for p in pts))
    fig, ax = pyplot().subplots(figsize=(6.2, 4.0))
    for i, p in enumerate(pts):
        colour = f"C{groups.index(str(p.get('group', ''))) % 10}"
        x, y = float(p["bytes"]) / 1024, float(p["robust"])
        lo, hi = p.get("low"), p.get("high")
        err = [[y - float(lo or 0)], [float(hi or 0) - y]] if _numeric(lo) and _numeric(hi) else None
        ax.errorbar([x], [y], yerr=err, fmt="o", markersize=7, capsize=3, color=colour,
                    markerfacecolor=colour if i in front else "white", zorder=3)
        ax.annotate(str(p.get("label", "")), (x, y), fontsize=7, xytext=(5, 4), textcoords="offset points")
    if len(front) >= 3:
        f = sorted((pts[i] for i in front), key=lambda p: p["bytes"])
        ax.step([p["bytes"] / 1024 for p in f], [p["robust"] for p in f], where="post", color="grey", ls="--",
                lw=1, label="Pareto front")
    for g in groups:
        if g:
            ax.plot([], [], "o", color=f"C{groups.index(g) % 10}", label=g)
    ax.plot([], [], "o", color="k", label="non-dominated")
    ax.plot([], [], "o", color="k", markerfacecolor="white", label="dominated")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    xs = [float(p["bytes"]) / 1024 for p in pts]
    ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
    ax.set_xlabel("artefact size on disk (KiB, log scale)")
    ax.set_ylabel("robust accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


__all__ = ["training_curve", "training_curves", "robustness_figure", "certified_vs_empirical", "pareto_front",
           "pareto_figure"]
