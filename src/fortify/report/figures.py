"""Report figures, drawn with matplotlib's Agg backend (no display needed)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from fortify.plotting import pyplot, save_figure


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def training_curve(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path | None:
    """Plot the per-epoch losses (left) and accuracies (right) of a training run to a PNG.

    ``history`` is the list of per-epoch dicts returned by ``Trainer.fit``; every numeric key
    containing ``loss`` or ``acc`` becomes one line against ``epoch`` (or the row index + 1).
    Returns the path written, or ``None`` when there is nothing to plot.
    """
    if not history:
        return None
    xs = [float(h["epoch"]) if _numeric(h.get("epoch")) else float(i + 1) for i, h in enumerate(history)]
    keys = [k for k in history[-1] if k != "epoch" and _numeric(history[-1][k])]
    groups = {"loss": [k for k in keys if "loss" in k], "accuracy": [k for k in keys if "acc" in k]}
    groups = {g: ks for g, ks in groups.items() if ks}
    if not groups:
        return None
    fig, axes = pyplot().subplots(1, len(groups), figsize=(4.2 * len(groups), 3.2), squeeze=False)
    for ax, (g, ks) in zip(axes[0], groups.items()):
        for k in ks:
            pts = [(x, float(h[k])) for x, h in zip(xs, history) if _numeric(h.get(k))]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=k)
        ax.set_xlabel("epoch")
        ax.set_ylabel(g)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("training curve", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
