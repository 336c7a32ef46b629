"""Pareto plot of compressed models: artefact size vs robust accuracy (matplotlib, Agg backend)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from fortify.compress.measure import Measurement
from fortify.plotting import pyplot, save_figure


def pareto_front(rows: Sequence[Measurement]) -> list[Measurement]:
    """Rows not dominated by another (smaller-or-equal bytes and higher-or-equal robust accuracy, one strictly)."""
    pts = [r for r in rows if r.robust_acc is not None]
    front = []
    for r in pts:
        dominated = any(o.bytes <= r.bytes and o.robust_acc >= r.robust_acc  # type: ignore[operator]
                        and (o.bytes < r.bytes or o.robust_acc > r.robust_acc) for o in pts)  # type: ignore[operator]
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: r.bytes)


def plot_pareto(rows: Sequence[Measurement], path: str | os.PathLike[str], *, title: str = "size vs robust accuracy") -> Path:
    """Scatter ``bytes`` (log x) vs ``robust_acc`` with the Pareto front drawn; saves a PNG/SVG to ``path``."""
    pts = [r for r in rows if r.robust_acc is not None]
    fig, ax = pyplot().subplots(figsize=(6, 4))
    ax.scatter([r.bytes / 1024 for r in pts], [r.robust_acc for r in pts], color="tab:blue")
    for r in pts:
        ax.annotate(r.name, (r.bytes / 1024, r.robust_acc), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = pareto_front(pts)
    ax.plot([r.bytes / 1024 for r in front], [r.robust_acc for r in front], color="tab:red", ls="--", label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("artefact size (KiB, log)")
    ax.set_ylabel("robust accuracy")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


__all__ = ["pareto_front", "plot_pareto"]
