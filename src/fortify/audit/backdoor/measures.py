"""Measures of a backdoor: clean accuracy and attack success rate (ASR).

ASR (Gu et al. 2017): among test inputs whose true label differs from their attack label (all-to-one:
``y != target``; all-to-all: every input), the fraction classified as the attack label once the trigger
is applied. Clean accuracy: the usual accuracy on untouched test inputs. Both are reported with the
number of inputs they were measured on and a Wilson 95% interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fortify.audit.backdoor._ops import predict_logits
from fortify.audit.backdoor.base import Poison
from fortify.validation import check_images, check_labels


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval of a binomial proportion ``k / n`` (``(nan, nan)`` for ``n = 0``)."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


@dataclass
class BackdoorMetrics:
    """Clean accuracy on ``n_clean`` inputs and ASR on ``n_triggered`` triggered inputs (fractions)."""

    clean_accuracy: float
    asr: float
    n_clean: int
    n_triggered: int

    def intervals(self) -> dict[str, tuple[float, float]]:
        """Wilson 95% intervals of both figures."""
        return {"clean_accuracy": wilson(round(self.clean_accuracy * self.n_clean), self.n_clean),
                "asr": wilson(round(self.asr * self.n_triggered), self.n_triggered)}


def triggered_test_set(poison: Poison, x: torch.Tensor, y: torch.Tensor,
                       num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x' (M, C, H, W), attack labels (M,))``: the rows whose true label differs from their attack
    label, with the trigger applied."""
    attack = poison.target_of(y, num_classes)
    keep = attack != y
    return poison.apply(x[keep]), attack[keep]


def attack_success_rate(model: nn.Module, poison: Poison, x: torch.Tensor, y: torch.Tensor) -> float:
    """ASR of ``poison``'s trigger on ``model`` over test inputs ``x (N, C, H, W)``, ``y (N,)``."""
    return evaluate_backdoor(model, poison, x, y).asr


def evaluate_backdoor(model: nn.Module, poison: Poison, x: torch.Tensor, y: torch.Tensor) -> BackdoorMetrics:
    """Clean accuracy and ASR of ``model`` on test inputs ``x (N, C, H, W)`` in [0, 1], ``y (N,)``.
    The model runs in eval mode (flags restored). Cost: two forward passes over ``x``."""
    xt = check_images(x, name="x")
    logits = predict_logits(model, xt)
    classes = int(logits.shape[1])
    yt = check_labels(y, xt.shape[0], classes, name="y")
    clean = float((logits.argmax(1) == yt).float().mean())
    xs, ts = triggered_test_set(poison, xt, yt, classes)
    asr = float((predict_logits(model, xs).argmax(1) == ts).float().mean()) if xs.shape[0] else math.nan
    return BackdoorMetrics(clean, asr, int(xt.shape[0]), int(xs.shape[0]))


__all__ = ["BackdoorMetrics", "attack_success_rate", "evaluate_backdoor", "triggered_test_set", "wilson"]
