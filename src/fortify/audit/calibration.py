"""Calibration: are the model's confidences honest? Metrics, their definitions, and the reliability diagram.

"ECE" means different things in different libraries; here every metric is defined exactly. Notation: ``p (N, C)``
predicted probabilities (rows sum to 1), ``y (N,)`` labels, ``conf_i = max_k p_ik`` the top-label confidence,
``pred_i = argmax_k p_ik``, ``acc_i = 1[pred_i = y_i]``. Equal-width bins ``B_b = [b/M, (b+1)/M)`` for
``b = 0..M-1`` plus the single point ``{1}`` as its own bin (``torch.bucketize(conf, linspace(0, 1, M+1),
right=True) - 1``: exactly torchmetrics' ``CalibrationError`` binning, so the numbers agree with it).

* **top-label ECE** (Naeini et al. 2015; Guo et al. 2017, "On calibration of modern neural networks"):
  ``sum_b |B_b|/N * |mean_{i in B_b} acc_i - mean_{i in B_b} conf_i|`` (torchmetrics ``norm="l1"``).
* **MCE** (maximum calibration error): ``max_b |acc(B_b) - conf(B_b)|`` over the bins, empty bins counting 0
  (torchmetrics ``norm="max"``).
* **RMS ECE**: ``sqrt(sum_b |B_b|/N (acc(B_b) - conf(B_b))^2)`` (torchmetrics ``norm="l2"``, no debiasing).
* **classwise ECE** (Kull et al. 2019, "Beyond temperature scaling"): for every class ``k`` the binned ECE of
  ``p_ik`` against ``1[y_i = k]`` over *all* N samples (same bins), averaged over the C classes.
* **adaptive ECE** (equal-mass bins; Nguyen & O'Connor 2015, Nixon et al. 2019 "Measuring calibration in deep
  learning"): sort by ``conf``, split into M bins of (nearly) equal count (``torch.tensor_split``), then the
  top-label formula.
* **Brier score** (Brier 1950), multi-class form: ``mean_i sum_k (p_ik - 1[y_i = k])^2`` (in ``[0, 2]``).
* **NLL**: ``-mean_i log p_{i, y_i}`` (natural log; probabilities clamped at ``1e-12``).

Every function takes probabilities; :func:`predict_probs` runs a model (frozen, never mutated) to get them.
Confidences with NaN, rows that are not distributions, labels of the wrong shape: :class:`InputError`.
Cost: O(N C) per metric (classwise: O(N C) with one scatter per class).
"""
from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from fortify.errors import ConfigError, InputError
from fortify.models.state import frozen
from fortify.validation import (
    check_device, check_images, check_labels, check_logits, check_model_input, forward_checked,
)

#: bins of the binned metrics unless told otherwise (Guo et al. 2017 use 15)
DEFAULT_BINS = 15
#: rows summing to 1 within this tolerance are probability vectors
ROW_SUM_TOL = 1e-3


def check_probs(probs: object, labels: object | None = None, *, name: str = "probs") -> tuple[torch.Tensor,
                                                                                               torch.Tensor | None]:
    """Validate ``probs (N, C)`` (floating, finite, in [0, 1], rows summing to 1) and ``labels (N,)`` (integers
    in ``[0, C)``); returns them detached as float64 / int64. InputError for anything else (NaN included)."""
    if not isinstance(probs, torch.Tensor) or not probs.is_floating_point():
        raise InputError(f"{name} must be a floating torch.Tensor (N, C), got "
                         f"{type(probs).__name__ if not isinstance(probs, torch.Tensor) else probs.dtype}")
    if probs.dim() != 2 or probs.shape[0] == 0 or probs.shape[1] < 2:
        raise InputError(f"{name} must have shape (N, C) with N >= 1 and C >= 2, got {tuple(probs.shape)}")
    p = probs.detach().to(torch.float64)
    if not bool(torch.isfinite(p).all()):
        raise InputError(f"{name} contains NaN or inf confidences")
    if float(p.min()) < -1e-9 or float(p.max()) > 1 + 1e-9:
        raise InputError(f"{name} must lie in [0, 1] (probabilities, not logits: apply softmax), found "
                         f"[{float(p.min()):.4g}, {float(p.max()):.4g}]")
    err = float((p.sum(dim=1) - 1).abs().max())
    if err > ROW_SUM_TOL:
        raise InputError(f"{name} rows must sum to 1 (probabilities), largest deviation {err:.3g}")
    y = None if labels is None else check_labels(labels, p.shape[0], p.shape[1], name="labels")
    return p.clamp(0, 1), y


def _check_bins(n_bins: object) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ConfigError(f"n_bins must be a positive integer, got {n_bins!r}")
    return n_bins


def binned(conf: torch.Tensor, hit: torch.Tensor, n_bins: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Equal-width binning of ``conf (N,)`` with outcomes ``hit (N,)`` (0/1): per bin (``M + 1`` slots, the last
    holding ``conf == 1``) the mean outcome, the mean confidence and the fraction of samples; empty bins are 0."""
    edges = torch.linspace(0, 1, n_bins + 1, dtype=conf.dtype, device=conf.device)
    idx = torch.bucketize(conf.contiguous(), edges, right=True) - 1
    count = torch.zeros(n_bins + 1, dtype=conf.dtype, device=conf.device).scatter_add_(0, idx, torch.ones_like(conf))
    s_conf = torch.zeros_like(count).scatter_add_(0, idx, conf)
    s_hit = torch.zeros_like(count).scatter_add_(0, idx, hit.to(conf.dtype))
    safe = count.clamp(min=1)
    return s_hit / safe, s_conf / safe, count / count.sum()


def _top(p: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    conf, pred = p.max(dim=1)
    return conf, (pred == y).to(p.dtype)


def top_label_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = DEFAULT_BINS, norm: str = "l1") -> float:
    """Top-label calibration error with equal-width bins (module docstring): ``norm`` ``"l1"`` (ECE), ``"l2"``
    (RMS) or ``"max"`` (MCE). ``probs (N, C)``, ``labels (N,)`` -> a float."""
    p, y = check_probs(probs, labels)
    assert y is not None
    conf, hit = _top(p, y)
    acc, cf, prop = binned(conf, hit, _check_bins(n_bins))
    gap = (acc - cf).abs()
    if norm == "l1":
        return float((gap * prop).sum())
    if norm == "l2":
        return float(((gap ** 2) * prop).sum().sqrt())
    if norm == "max":
        return float(gap.max())
    raise ConfigError(f"unknown calibration norm {norm!r}; allowed: l1, l2, max")


def max_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = DEFAULT_BINS) -> float:
    """MCE: the largest per-bin gap ``|acc(B_b) - conf(B_b)|`` (Naeini et al. 2015)."""
    return top_label_ece(probs, labels, n_bins, norm="max")


def classwise_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = DEFAULT_BINS) -> float:
    """Classwise ECE (Kull et al. 2019): the mean over classes ``k`` of the binned ECE of ``p[:, k]`` against
    ``1[y = k]`` on all N samples. ``probs (N, C)``, ``labels (N,)`` -> a float."""
    p, y = check_probs(probs, labels)
    assert y is not None
    total = 0.0
    for k in range(p.shape[1]):
        acc, cf, prop = binned(p[:, k], (y == k).to(p.dtype), _check_bins(n_bins))
        total += float(((acc - cf).abs() * prop).sum())
    return total / p.shape[1]


def adaptive_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = DEFAULT_BINS) -> float:
    """Equal-mass (adaptive) ECE (Nixon et al. 2019): samples sorted by top-label confidence, split into
    ``n_bins`` bins of equal count (``tensor_split``; fewer when N < n_bins), then ``sum_b |B_b|/N |acc - conf|``."""
    p, y = check_probs(probs, labels)
    assert y is not None
    conf, hit = _top(p, y)
    order = conf.argsort()
    n = conf.numel()
    total = 0.0
    for part in torch.tensor_split(order, min(_check_bins(n_bins), n)):
        total += part.numel() / n * abs(float(hit[part].mean()) - float(conf[part].mean()))
    return total


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Multi-class Brier score ``mean_i sum_k (p_ik - 1[y_i = k])^2`` (Brier 1950), in ``[0, 2]``."""
    p, y = check_probs(probs, labels)
    assert y is not None
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).to(p.dtype)
    return float(((p - onehot) ** 2).sum(dim=1).mean())


def nll(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Negative log-likelihood ``-mean_i log p_{i, y_i}`` (probabilities clamped at 1e-12)."""
    p, y = check_probs(probs, labels)
    assert y is not None
    return float(-p.gather(1, y[:, None]).clamp(min=1e-12).log().mean())


@dataclass
class CalibrationReport:
    """Every calibration metric of one set of predictions (definitions: module docstring) and its size."""

    ece: float
    mce: float
    rms_ece: float
    classwise_ece: float
    adaptive_ece: float
    brier: float
    nll: float
    accuracy: float
    mean_confidence: float
    n: int
    n_bins: int
    #: percentile-bootstrap 95% interval of ``ece`` over the N predictions (None: not computed)
    ece_interval: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def ece_interval(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = DEFAULT_BINS, *, resamples: int = 200,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap ``level`` interval of the top-label ECE, rows resampled with a seeded generator.
    Cost: ``resamples`` ECE evaluations, O(N) each."""
    g = torch.Generator().manual_seed(seed)
    n = probs.shape[0]
    draws = torch.tensor([top_label_ece(probs[idx], labels[idx], n_bins) for idx in
                          (torch.randint(0, n, (n,), generator=g) for _ in range(resamples))], dtype=torch.float64)
    lo, hi = torch.quantile(draws, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return float(lo), float(hi)


def calibration_report(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = DEFAULT_BINS) -> CalibrationReport:
    """All metrics of the module docstring for ``probs (N, C)`` and ``labels (N,)``. Cost: O(N C)."""
    p, y = check_probs(probs, labels)
    assert y is not None
    conf, hit = _top(p, y)
    return CalibrationReport(
        ece=top_label_ece(p, y, n_bins), mce=top_label_ece(p, y, n_bins, "max"),
        rms_ece=top_label_ece(p, y, n_bins, "l2"), classwise_ece=classwise_ece(p, y, n_bins),
        adaptive_ece=adaptive_ece(p, y, n_bins), brier=brier_score(p, y), nll=nll(p, y),
        accuracy=float(hit.mean()), mean_confidence=float(conf.mean()), n=int(p.shape[0]), n_bins=n_bins,
        ece_interval=ece_interval(p, y, n_bins))


def check_inputs(model: object, x: object, *, name: str = "x") -> torch.Tensor:
    """The shared checks on ``(model, x)``: an ``nn.Module``; ``x (N, *sample)`` floating, finite, on the model's
    device, of its dtype and declared sample shape (InputError otherwise). Returns ``x`` detached."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    xt = check_images(x, (-math.inf, math.inf), name=name)
    check_device(model, xt, name=name)
    check_model_input(model, xt, name=name)
    return xt.detach()


def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits ``(N, C)`` of ``model`` on ``x (N, *sample)``, in chunks, without gradients, with the model
    frozen (flags restored: never mutated). Cost: N forward passes."""
    x = check_inputs(model, x)
    out = []
    with frozen(model), torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            out.append(forward_checked(model, x[s:s + batch_size]).detach())
    return check_logits(torch.cat(out), x.shape[0])


def predict_probs(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Softmax probabilities ``(N, C)`` of ``model`` on ``x`` (see :func:`predict_logits`)."""
    return predict_logits(model, x, batch_size).softmax(dim=1)


def reliability_diagram(probs: torch.Tensor, labels: torch.Tensor, path: str | Path, *, n_bins: int = DEFAULT_BINS,
                        title: str = "", others: dict[str, torch.Tensor] | None = None) -> Path:
    """PNG with two panels: the reliability diagram (per equal-width bin: accuracy vs mean confidence, the
    diagonal is perfect calibration, bars coloured by the gap) and the confidence histogram (fraction of
    samples per bin, with the accuracy and mean confidence marked). ``others`` adds, on the reliability panel,
    the curve of other predictions of the same samples (e.g. ``{"temperature": probs_T}``). Agg backend, written
    atomically. Returns the path."""
    from matplotlib.figure import Figure

    from fortify.io import write_atomic

    p, y = check_probs(probs, labels)
    assert y is not None
    p, y = p.detach().cpu(), y.cpu()  # drawn with numpy: the figures' numbers on the CPU
    m = _check_bins(n_bins)
    conf, hit = _top(p, y)
    acc, cf, prop = (t.numpy() for t in binned(conf, hit, m))
    centres = ((torch.arange(m, dtype=torch.float64) + 0.5) / m).numpy()
    fig = Figure(figsize=(8, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.bar(centres, acc[:m], width=1 / m, edgecolor="black", color="#4c72b0", label="accuracy")
    ax1.bar(centres, (cf[:m] - acc[:m]), bottom=acc[:m], width=1 / m, color="#dd8452", alpha=0.5, label="gap")
    ax1.plot([0, 1], [0, 1], "k--", lw=1)
    for name, other in (others or {}).items():
        po, _ = check_probs(other.detach().cpu(), y, name=name)
        a2, c2, w2 = binned(*_top(po, y), m)
        keep = w2[:m] > 0
        ax1.plot(c2[:m][keep].numpy(), a2[:m][keep].numpy(), marker="o", ms=3, label=name)
    ax1.set_xlabel("confidence")
    ax1.set_ylabel("accuracy")
    ax1.set_title(f"reliability (ECE {float((abs(acc - cf) * prop).sum()):.3f})", fontsize=9)
    ax1.set_xlim(0, 1)
    ax1.set_ylim(0, 1)
    ax1.legend(fontsize=7, loc="upper left")
    ax2.bar(centres, prop[:m] + (prop[m] if m else 0) * (centres > 1 - 1 / m), width=1 / m, edgecolor="black",
            color="#55a868")
    ax2.axvline(float(hit.mean()), color="k", ls="--", lw=1, label=f"accuracy {float(hit.mean()):.3f}")
    ax2.axvline(float(conf.mean()), color="r", ls=":", lw=1, label=f"mean confidence {float(conf.mean()):.3f}")
    ax2.set_xlabel("confidence")
    ax2.set_ylabel("fraction of samples")
    ax2.set_title("confidence histogram", fontsize=9)
    ax2.legend(fontsize=7, loc="upper left")
    fig.suptitle(title or f"{p.shape[0]} samples, {m} bins", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    return write_atomic(Path(path), buf.getvalue(), what="figure")


__all__ = ["CalibrationReport", "DEFAULT_BINS", "adaptive_ece", "binned", "brier_score", "calibration_report",
           "check_inputs", "check_probs", "classwise_ece", "ece_interval", "max_calibration_error", "nll", "predict_logits", "predict_probs",
           "reliability_diagram", "top_label_ece"]
