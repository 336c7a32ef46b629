"""The corruption table: a model's accuracy per corruption and severity, and the mean corruption error.

Definitions (Hendrycks & Dietterich 2019, "Benchmarking neural network robustness to common corruptions
and perturbations", ICLR): ``E_{c,s}`` is the top-1 error under corruption ``c`` at severity ``s`` and
``E_clean`` the clean error.

* without a baseline: ``CE_c = mean_s E_{c,s}`` and ``mCE = mean_c CE_c`` (MNIST-C reports this, as
  accuracy ``1 - E``);
* with a baseline model ``b`` (Hendrycks' AlexNet role): ``CE_c = sum_s E_{c,s} / sum_s E^b_{c,s}``,
  ``mCE = mean_c CE_c``, and the relative ``rmCE = mean_c sum_s (E_{c,s} - E_clean) / sum_s (E^b_{c,s} -
  E^b_clean)`` (a corruption on which the baseline loses nothing gives ``nan`` and is left out of the mean).

Both models see the very same corrupted images (each corruption is applied once to the whole set, seeded).
Cost: one pass of ``corrupt`` per (corruption, severity) and ``len(x) / batch_size`` forward passes per
model; the models are run frozen (``fortify.models.state.frozen``), never mutated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from fortify.audit.corruptions.base import CORRUPTIONS, MNIST_C, check_severity, corrupt
from fortify.errors import ConfigError, InputError
from fortify.models.state import device_of, frozen
from fortify.validation import check_batch

__all__ = ["CorruptionReport", "CorruptionRow", "corruption_table"]


@dataclass(frozen=True)
class CorruptionRow:
    """Accuracy of the model (and its baseline) on one corruption at one severity."""

    corruption: str
    severity: int
    accuracy: float
    baseline_accuracy: float | None = None

    @property
    def error(self) -> float:
        return 1.0 - self.accuracy

    @property
    def baseline_error(self) -> float | None:
        return None if self.baseline_accuracy is None else 1.0 - self.baseline_accuracy


@dataclass(frozen=True)
class CorruptionReport:
    """Result of :func:`corruption_table`: one :class:`CorruptionRow` per (corruption, severity)."""

    rows: tuple[CorruptionRow, ...]
    clean_accuracy: float
    n: int
    seed: int
    baseline_clean_accuracy: float | None = None

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys(r.corruption for r in self.rows))

    @property
    def clean_error(self) -> float:
        return 1.0 - self.clean_accuracy

    def _of(self, name: str) -> list[CorruptionRow]:
        return [r for r in self.rows if r.corruption == name]

    def accuracy(self, name: str) -> float:
        """Mean accuracy over the severities measured for corruption ``name``."""
        rows = self._of(name)
        if not rows:
            raise ConfigError(f"corruption {name!r} is not in this table; measured: {', '.join(self.names)}")
        return sum(r.accuracy for r in rows) / len(rows)

    def corruption_error(self, name: str) -> float:
        """``CE_c``: mean error without a baseline, ``sum_s E / sum_s E_baseline`` with one."""
        rows = self._of(name)
        if self.baseline_clean_accuracy is None:
            return 1.0 - self.accuracy(name)
        base = sum(r.baseline_error or 0.0 for r in rows)
        return sum(r.error for r in rows) / base if base > 0 else math.nan

    def relative_corruption_error(self, name: str) -> float:
        """``sum_s (E - E_clean) / sum_s (E_b - E_b_clean)``; nan without a baseline or a zero denominator."""
        if self.baseline_clean_accuracy is None:
            return math.nan
        rows = self._of(name)
        b_clean = 1.0 - self.baseline_clean_accuracy
        den = sum((r.baseline_error or 0.0) - b_clean for r in rows)
        num = sum(r.error - self.clean_error for r in rows)
        return num / den if den > 0 else math.nan

    @property
    def mean_accuracy(self) -> float:
        """Mean over corruptions of the accuracy (MNIST-C's headline figure)."""
        return sum(self.accuracy(n) for n in self.names) / len(self.names)

    @property
    def mce(self) -> float:
        """Mean corruption error ``mean_c CE_c`` (normalised by the baseline when there is one)."""
        return _nanmean([self.corruption_error(n) for n in self.names])

    @property
    def relative_mce(self) -> float:
        """Relative mCE (needs a baseline; nan otherwise)."""
        return _nanmean([self.relative_corruption_error(n) for n in self.names])

    def to_rows(self) -> list[dict[str, object]]:
        """One dict per (corruption, severity): corruption, severity, accuracy, error, and with a baseline
        baseline_accuracy, baseline_error (summary figures: :meth:`summary`)."""
        out: list[dict[str, object]] = []
        for r in self.rows:
            row: dict[str, object] = {"corruption": r.corruption, "severity": r.severity, "accuracy": r.accuracy,
                                      "error": r.error}
            if r.baseline_accuracy is not None:
                row.update(baseline_accuracy=r.baseline_accuracy, baseline_error=r.baseline_error)
            out.append(row)
        return out

    def summary(self) -> dict[str, float]:
        """Headline figures: clean accuracy, mean corrupted accuracy, mCE (and relative mCE with a baseline)."""
        out = {"clean_accuracy": self.clean_accuracy, "mean_accuracy": self.mean_accuracy, "mce": self.mce}
        if self.baseline_clean_accuracy is not None:
            out.update(relative_mce=self.relative_mce, baseline_clean_accuracy=self.baseline_clean_accuracy)
        return out


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Top-1 accuracy of a frozen model, in batches, without gradients."""
    device = device_of(model) or x.device
    correct = 0
    with frozen(model), torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size].to(device)
            correct += int((model(xb).argmax(1) == y[start:start + batch_size].to(device)).sum())
    return correct / len(x)


def _plan(names: Sequence[str] | None, severities: int | Sequence[int] | None) -> list[tuple[str, int]]:
    if names is None:
        names = [n for n in MNIST_C if n in CORRUPTIONS] + [n for n in CORRUPTIONS.names() if n not in MNIST_C]
    elif isinstance(names, str):
        names = [names]
    if not names:
        raise ConfigError("names must list at least one corruption")
    plan: list[tuple[str, int]] = []
    for name in names:
        spec = CORRUPTIONS.get(name)
        if severities is None:
            levels: Sequence[object] = [spec.default]
        elif isinstance(severities, (int, str, bool)):
            levels = [severities]
        else:
            levels = list(severities)
        if not levels:
            raise ConfigError("severities must list at least one severity in 1..5")
        plan += [(name, check_severity(s, name)) for s in levels]
    return plan


def corruption_table(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: Sequence[str] | None = None,
                     severities: int | Sequence[int] | None = None, *, seed: int = 0, batch_size: int = 256,
                     baseline: nn.Module | None = None) -> CorruptionReport:
    """Accuracy of ``model`` on ``x`` ``(N, C, H, W)`` in [0, 1] with labels ``y`` ``(N,)`` under each corruption.

    ``names``: corruptions to measure (default: all registered, MNIST-C's fifteen in the paper's order);
    ``severities``: None = each corruption's MNIST-C severity, an int or a list of ints in 1..5 = those for
    every corruption (Hendrycks' mCE averages severities 1..5). ``baseline``: a second model evaluated on
    the same corrupted images, to normalise the mCE. Raises InputError (bad ``x``/``y``/model), ConfigError
    (severity, batch size), UnknownNameError (unknown corruption).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    x, y, _ = check_batch(model, x, y, (0.0, 1.0))
    if x.dim() != 4:
        raise InputError(f"corruption_table takes images (N, C, H, W), got shape {tuple(x.shape)}")
    if baseline is not None:
        check_batch(baseline, x, y, (0.0, 1.0), x_name="x (for the baseline)")
    plan = _plan(names, severities)
    clean = _accuracy(model, x, y, batch_size)
    base_clean = None if baseline is None else _accuracy(baseline, x, y, batch_size)
    rows = []
    for name, severity in plan:
        xc = corrupt(x, name, severity, seed=seed)
        rows.append(CorruptionRow(name, severity, _accuracy(model, xc, y, batch_size),
                                  None if baseline is None else _accuracy(baseline, xc, y, batch_size)))
    return CorruptionReport(tuple(rows), clean, len(x), seed, base_clean)
