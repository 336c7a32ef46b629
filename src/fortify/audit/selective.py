"""Selective prediction: abstain where the model is least confident and measure the risk of what is kept.

Any confidence score works (higher = more trusted): the maximum softmax probability (MSP), a calibrated MSP, the
negated score of an OOD detector, a certificate's lower margin (a certified point need never be abstained on).
``correct (N,)`` says which predictions were right.

* **risk-coverage curve** (El-Yaniv & Wiener 2010; Geifman & El-Yaniv 2017): sort by confidence, descending; keeping
  the ``k`` most confident predictions gives coverage ``k / N`` and selective risk ``errors among them / k``. Tied
  confidences are one threshold: inside a tie group the errors are spread evenly (the expected curve over a random
  order of the ties), so the curve does not depend on how a sort breaks ties.
* **AURC**: ``(1 / N) sum_{k=1..N} risk(k)``, the area under that curve.
* **E-AURC** (Geifman et al. 2019, "Bias-reduced uncertainty estimation for deep neural classifiers"): ``AURC -
  AURC*`` with ``AURC*`` the AURC of the perfect ranking (every error after every correct prediction), computed
  exactly on the same N and error count (not the continuous ``r + (1 - r) ln(1 - r)`` approximation): 0 for a
  perfect ranking, whatever the accuracy.
* **accuracy at coverage c**: the accuracy of the ``ceil(c N)`` most confident predictions (ties spread as above).
* **coverage at risk r**: the largest coverage whose selective risk is ``<= r``.

Cost: one sort, O(N log N). Shapes: ``confidence (N,)`` floating, ``correct (N,)`` bool or 0/1.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from fortify.errors import ConfigError, InputError


def check_scores(confidence: object, correct: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``confidence (N,)`` floating and finite, ``correct (N,)`` bool or 0/1 of the same length (InputError)."""
    if not isinstance(confidence, torch.Tensor) or not confidence.is_floating_point() or confidence.dim() != 1:
        raise InputError("confidence must be a floating torch.Tensor of shape (N,)")
    if confidence.numel() == 0:
        raise InputError("confidence is empty")
    if not bool(torch.isfinite(confidence).all()):
        raise InputError("confidence contains NaN or inf values")
    if not isinstance(correct, torch.Tensor) or correct.shape != confidence.shape:
        raise InputError(f"correct must be a tensor of shape {tuple(confidence.shape)}")
    c = correct.detach().double()
    if not bool(((c == 0) | (c == 1)).all()):
        raise InputError("correct must be boolean (or 0/1)")
    return confidence.detach().double().cpu(), c.cpu()


@dataclass
class RiskCoverage:
    """``coverage (N,)`` = ``k / N`` and ``risk (N,)`` for ``k = 1..N``; ``threshold (N,)`` the confidence of the
    ``k``-th kept prediction; summary numbers (module docstring)."""

    coverage: torch.Tensor
    risk: torch.Tensor
    threshold: torch.Tensor
    aurc: float
    e_aurc: float
    optimal_aurc: float
    error_rate: float
    n: int

    def accuracy_at(self, coverage: float) -> float:
        """Accuracy of the ``ceil(coverage N)`` most confident predictions; ``coverage`` in (0, 1]."""
        if isinstance(coverage, bool) or not isinstance(coverage, (int, float)) or not 0 < coverage <= 1:
            raise ConfigError(f"coverage must be in (0, 1], got {coverage!r}")
        k = max(1, math.ceil(coverage * self.n - 1e-9))
        return 1.0 - float(self.risk[k - 1])

    def coverage_at(self, risk: float) -> float:
        """Largest coverage whose selective risk is ``<= risk`` (0 when even the most confident one is riskier)."""
        if isinstance(risk, bool) or not isinstance(risk, (int, float)) or not 0 <= risk <= 1:
            raise ConfigError(f"risk must be in [0, 1], got {risk!r}")
        ok = (self.risk <= risk + 1e-12).nonzero()
        return float(self.coverage[int(ok.max())]) if ok.numel() else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {"aurc": self.aurc, "e_aurc": self.e_aurc, "optimal_aurc": self.optimal_aurc,
                "error_rate": self.error_rate, "n": self.n}


def _cumulative_errors(conf: torch.Tensor, err: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Errors among the ``k`` most confident (``k = 1..N``), ties spread evenly; and the sorted confidences."""
    order = conf.argsort(descending=True, stable=True)
    cs, es = conf[order], err[order]
    n = cs.numel()
    starts = torch.ones(n, dtype=torch.bool)
    starts[1:] = cs[1:] != cs[:-1]
    group = starts.long().cumsum(0) - 1
    g = int(group[-1]) + 1
    size = torch.zeros(g, dtype=torch.float64).scatter_add_(0, group, torch.ones(n, dtype=torch.float64))
    errs = torch.zeros(g, dtype=torch.float64).scatter_add_(0, group, es)
    before = torch.cat([torch.zeros(1, dtype=torch.float64), errs.cumsum(0)[:-1]])
    pos = torch.arange(n, dtype=torch.float64) - torch.cat([torch.zeros(1), size.cumsum(0)[:-1]]).double()[group] + 1
    return before[group] + errs[group] * pos / size[group], cs


def risk_coverage(confidence: torch.Tensor, correct: torch.Tensor) -> RiskCoverage:
    """The risk-coverage curve, AURC and E-AURC of ``confidence (N,)`` for predictions ``correct (N,)``."""
    conf, ok = check_scores(confidence, correct)
    n = conf.numel()
    cum, thr = _cumulative_errors(conf, 1 - ok)
    k = torch.arange(1, n + 1, dtype=torch.float64)
    risk = cum / k
    errors = float((1 - ok).sum())
    best = (k - (n - errors)).clamp(min=0) / k
    aurc, opt = float(risk.mean()), float(best.mean())
    return RiskCoverage(coverage=k / n, risk=risk, threshold=thr, aurc=aurc, e_aurc=aurc - opt, optimal_aurc=opt,
                        error_rate=errors / n, n=n)


def aurc(confidence: torch.Tensor, correct: torch.Tensor) -> float:
    """Area under the risk-coverage curve (module docstring)."""
    return risk_coverage(confidence, correct).aurc


def e_aurc(confidence: torch.Tensor, correct: torch.Tensor) -> float:
    """Excess AURC over the perfect ranking of the same predictions (0 for a perfect ranking)."""
    return risk_coverage(confidence, correct).e_aurc


def accuracy_at_coverage(confidence: torch.Tensor, correct: torch.Tensor, coverage: float) -> float:
    """Accuracy of the ``ceil(coverage N)`` most confident predictions."""
    return risk_coverage(confidence, correct).accuracy_at(coverage)


def risk_coverage_figure(curves: dict[str, RiskCoverage], path: str | Path, *, title: str = "") -> Path:
    """PNG: selective risk against coverage, one line per named curve (legend with AURC / E-AURC). Agg, atomic."""
    from matplotlib.figure import Figure

    from fortify.io import write_atomic

    if not curves:
        raise ConfigError("risk_coverage_figure needs at least one curve")
    fig = Figure(figsize=(4.8, 3.6))
    ax = fig.subplots()
    for name, rc in curves.items():
        ax.plot(rc.coverage.cpu().numpy(), rc.risk.cpu().numpy(), lw=1.5,
                label=f"{name} (AURC {rc.aurc:.4f}, E-AURC {rc.e_aurc:.4f})")
    ax.set_xlabel("coverage")
    ax.set_ylabel("selective risk (error rate of kept)")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax.set_title(title or "risk-coverage", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    return write_atomic(Path(path), buf.getvalue(), what="figure")


__all__ = ["RiskCoverage", "accuracy_at_coverage", "aurc", "check_scores", "e_aurc", "risk_coverage",
           "risk_coverage_figure"]
