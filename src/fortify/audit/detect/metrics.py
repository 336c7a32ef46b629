"""How well a detector separates in-distribution from anomalous inputs (sklearn-free; equal to sklearn.metrics).

Scores: ``s_in (n,)`` of in-distribution inputs and ``s_out (m,)`` of anomalous ones, higher = more anomalous.

* **AUROC** (anomalous = positive): ``P(s_out > s_in) + 0.5 P(s_out = s_in)`` (Mann-Whitney with ties counted
  half; sklearn's ``roc_auc_score``).
* **AUPR-out**: average precision with anomalous = positive and score ``s``; **AUPR-in**: in-distribution =
  positive and score ``-s``. Average precision as sklearn's ``average_precision_score``: ``sum_t (R_t - R_{t-1})
  P_t`` over the distinct thresholds, in decreasing order (no interpolation).
* **FPR@95TPR** (in-distribution = positive, Liang et al. 2018): the fraction of anomalous inputs accepted at the
  threshold ``tau`` that accepts 95% of in-distribution inputs: ``tau`` the ``ceil(0.95 n)``-th smallest ``s_in``,
  accepted = ``s <= tau`` (sklearn's ``roc_curve`` fpr at the first tpr >= 0.95).
* intervals: percentile bootstrap (``resamples`` draws of ``s_in`` and ``s_out``, each resampled with replacement
  and separately; a ``torch.Generator`` seeded with ``seed``), 95% by default.

Cost: one sort of ``n + m`` values per metric (per bootstrap draw).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fortify.errors import ConfigError, InputError


def check_score_pair(s_in: object, s_out: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Two non-empty finite floating ``(n,)`` / ``(m,)`` tensors, as float64 on the CPU (InputError otherwise)."""
    out = []
    for name, s in (("s_in", s_in), ("s_out", s_out)):
        if not isinstance(s, torch.Tensor) or not s.is_floating_point() or s.dim() != 1 or s.numel() == 0:
            raise InputError(f"{name} must be a non-empty floating tensor of shape (n,)")
        if not bool(torch.isfinite(s).all()):
            raise InputError(f"{name} contains NaN or inf scores")
        out.append(s.detach().double().cpu())
    return out[0], out[1]


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Average ranks (1-based, ties share their mean rank)."""
    sv, order = v.sort(stable=True)
    n = v.numel()
    starts = torch.ones(n, dtype=torch.bool)
    starts[1:] = sv[1:] != sv[:-1]
    group = starts.long().cumsum(0) - 1
    first = torch.nonzero(starts).squeeze(1).double()
    last = torch.cat([first[1:] - 1, torch.tensor([n - 1.0], dtype=torch.float64)])
    avg = (first + last) / 2 + 1
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = avg[group]
    return ranks


def auroc(s_in: torch.Tensor, s_out: torch.Tensor) -> float:
    """``P(s_out > s_in) + 0.5 P(tie)`` (Mann-Whitney U / (n m))."""
    a, b = check_score_pair(s_in, s_out)
    r = _ranks(torch.cat([a, b]))
    m = b.numel()
    return float((r[a.numel():].sum() - m * (m + 1) / 2) / (a.numel() * m))


def average_precision(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """sklearn's average precision of ``scores (n,)`` for the bool ``positive (n,)`` labels."""
    order = scores.argsort(descending=True, stable=True)
    s, p = scores[order], positive[order].double()
    last = torch.ones(s.numel(), dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]  # the end of each tie group: one threshold per distinct score
    tp, k = p.cumsum(0)[last], (torch.nonzero(last).squeeze(1) + 1).double()
    total = float(p.sum())
    if total == 0:
        return 0.0
    recall, precision = tp / total, tp / k
    prev = torch.cat([torch.zeros(1, dtype=torch.float64), recall[:-1]])
    return float(((recall - prev) * precision).sum())


def aupr_out(s_in: torch.Tensor, s_out: torch.Tensor) -> float:
    """Average precision with the anomalous inputs as positives."""
    a, b = check_score_pair(s_in, s_out)
    return average_precision(torch.cat([a, b]), torch.cat([torch.zeros(a.numel()), torch.ones(b.numel())]).bool())


def aupr_in(s_in: torch.Tensor, s_out: torch.Tensor) -> float:
    """Average precision with the in-distribution inputs as positives (score ``-s``)."""
    a, b = check_score_pair(s_in, s_out)
    return average_precision(-torch.cat([a, b]), torch.cat([torch.ones(a.numel()), torch.zeros(b.numel())]).bool())


def fpr_at_tpr(s_in: torch.Tensor, s_out: torch.Tensor, tpr: float = 0.95) -> float:
    """Fraction of anomalous inputs with ``s <= tau``, ``tau`` the ``ceil(tpr n)``-th smallest in-distribution score."""
    if isinstance(tpr, bool) or not isinstance(tpr, (int, float)) or not 0 < tpr <= 1:
        raise ConfigError(f"tpr must be in (0, 1], got {tpr!r}")
    a, b = check_score_pair(s_in, s_out)
    tau = a.sort().values[max(1, math.ceil(tpr * a.numel() - 1e-9)) - 1]
    return float((b <= tau).double().mean())


METRICS = {"auroc": auroc, "aupr_in": aupr_in, "aupr_out": aupr_out, "fpr95": fpr_at_tpr}


@dataclass
class DetectionScore:
    """Every metric of one (in, out) pair with its bootstrap interval ``(low, high)``; ``n_in``, ``n_out``."""

    auroc: float
    aupr_in: float
    aupr_out: float
    fpr95: float
    intervals: dict[str, tuple[float, float]]
    n_in: int
    n_out: int

    def to_dict(self) -> dict[str, object]:
        return {"auroc": self.auroc, "aupr_in": self.aupr_in, "aupr_out": self.aupr_out, "fpr95": self.fpr95,
                "intervals": {k: list(v) for k, v in self.intervals.items()}, "n_in": self.n_in, "n_out": self.n_out}


def detection_score(s_in: torch.Tensor, s_out: torch.Tensor, *, resamples: int = 200, level: float = 0.95,
                    seed: int = 0) -> DetectionScore:
    """AUROC, AUPR-in/out and FPR@95TPR of ``(s_in (n,), s_out (m,))`` with percentile-bootstrap intervals
    (``resamples = 0``: intervals are the point values). Cost: ``(resamples + 1) x 4`` sorts of ``n + m`` values."""
    a, b = check_score_pair(s_in, s_out)
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 0:
        raise ConfigError(f"resamples must be an integer >= 0, got {resamples!r}")
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level!r}")
    point = {k: f(a, b) for k, f in METRICS.items()}
    draws: dict[str, list[float]] = {k: [] for k in METRICS}
    g = torch.Generator().manual_seed(seed)
    for _ in range(resamples):
        ra = a[torch.randint(0, a.numel(), (a.numel(),), generator=g)]
        rb = b[torch.randint(0, b.numel(), (b.numel(),), generator=g)]
        for k, f in METRICS.items():
            draws[k].append(f(ra, rb))
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    intervals: dict[str, tuple[float, float]] = {}
    for k, v in draws.items():
        lo, hi = torch.quantile(torch.tensor(v, dtype=torch.float64), q).tolist() if v else (point[k], point[k])
        intervals[k] = (float(lo), float(hi))
    return DetectionScore(point["auroc"], point["aupr_in"], point["aupr_out"], point["fpr95"], intervals,
                          a.numel(), b.numel())


__all__ = ["DetectionScore", "aupr_in", "aupr_out", "auroc", "average_precision", "check_score_pair",
           "detection_score", "fpr_at_tpr"]
