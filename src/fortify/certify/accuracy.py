"""Certified accuracy, certified-accuracy-vs-eps (or radius) curves and their plot.

* :func:`certify` runs a registered certifier by name.
* :func:`certified_accuracy` is the fraction of points certified (correct and provably robust).
* :func:`certified_accuracy_curve` evaluates several radii: bound methods re-run per eps (bounds
  depend on eps); smoothing certifies once and reads the curve off the certified radii
  (accuracy(r) = fraction with correct prediction and radius >= r).
* :func:`plot_certified_curves` draws one or more curves with matplotlib (Agg) into a file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from fortify import progress
from fortify.certify.base import CERTIFIERS, Certificate
from fortify.errors import ConfigError, ThreatModelError
from fortify.plotting import pyplot, save_figure
from fortify.threat import ThreatModel


def certify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, method: str = "crown",
            **options: Any) -> Certificate:
    """Run the certifier registered as ``method`` (constructed with ``options``; an unknown option is a
    ConfigError naming the allowed ones) on ``x (N, ...)``."""
    return CERTIFIERS.create(method, **options)(model, x, y, threat)


def certified_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                       method: str = "crown", **options: Any) -> float:
    """Fraction of ``x (N, ...)`` that ``method`` certifies under ``threat``, in ``[0, 1]``."""
    return certify(model, x, y, threat, method, **options).certified_accuracy


@dataclass
class CertifiedCurve:
    """Certified accuracy at each radius: ``eps[i] -> accuracy[i]``; ``clean`` = accuracy at eps 0
    as the method measures it (smoothing: the smoothed classifier's non-abstained accuracy)."""

    method: str
    norm: str
    eps: list[float]
    accuracy: list[float]
    n: int
    meta: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "norm": self.norm, "eps": self.eps, "accuracy": self.accuracy, "n": self.n,
                **self.meta}


def certified_accuracy_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str,
                             eps: Sequence[float], method: str = "crown", *,
                             bounds: tuple[float, float] = (0.0, 1.0), **options: Any) -> CertifiedCurve:
    """Certified accuracy of ``method`` at each radius in ``eps`` (ascending or not)."""
    radii = [float(e) for e in eps]
    if not radii:
        raise ConfigError("eps must list at least one radius")
    for e in radii:
        if not math.isfinite(e) or e < 0:
            raise ThreatModelError(f"eps must be finite and >= 0, got {e!r}")
    if method == "smoothing":
        cert = certify(model, x, y, ThreatModel(norm, 0.0, bounds), method, **options)
        good = cert.extra["prediction"].to(y.device) == y
        rad = cert.radius if cert.radius is not None else torch.zeros(len(cert))
        acc = [float((good & (rad.to(y.device) >= e)).float().mean()) for e in radii]
        meta = {"sigma": options.get("sigma", 0.25)}
    else:
        acc = []
        with progress.task(f"certified curve {method}", total=len(radii), unit="radii") as bar:
            for e in radii:
                bar.update(info=f"eps {e:.3g}")
                acc.append(certified_accuracy(model, x, y, ThreatModel(norm, e, bounds), method, **options))
                bar.advance()
        meta = {}
    return CertifiedCurve(method, norm, radii, acc, int(x.shape[0]), meta)


def plot_certified_curves(curves: CertifiedCurve | Sequence[CertifiedCurve], path: str | Path,
                          title: str | None = None) -> Path:
    """Plot certified accuracy vs eps for one or more curves into ``path`` (png/svg/pdf)."""
    items = [curves] if isinstance(curves, CertifiedCurve) else list(curves)
    if not items:
        raise ConfigError("no curves to plot")
    fig, ax = pyplot().subplots(figsize=(5, 3.6))
    for cv in items:
        label = cv.method + (f" (sigma={cv.meta['sigma']:g})" if "sigma" in cv.meta else "")
        ax.plot(cv.eps, [100 * a for a in cv.accuracy], marker="o", ms=3, label=label)
    norms = sorted({cv.norm for cv in items})
    ax.set_xlabel(f"radius eps ({', '.join(norms)})")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or f"certified accuracy (n={items[0].n})")
    fig.tight_layout()
    return save_figure(fig, path)


__all__ = ["certify", "certified_accuracy", "CertifiedCurve", "certified_accuracy_curve", "plot_certified_curves"]
