"""ROAD: RemOve And Debias (Rong, Leemann, Borisov, Kasneci & Kasneci 2022, "A consistent and
efficient evaluation strategy for attribution methods", ICML).

Pixel flipping without retraining whose removed pixels are *imputed* by noisy linear interpolation
of their neighbours (:mod:`fortify.explain.metrics._impute`) instead of set to a constant, so that
the shape of the removed region leaks no class information (the blur / mask bias that makes ROAR
and plain deletion disagree). For each fraction ``p`` in ``fractions`` (default 0.1 ... 0.9, the
paper's grid) the ``round(p H W)`` pixels ranked first by the attribution summed over channels
(ties in index order) are removed: **MoRF** (``road-morf``: most relevant first) or **LeRF**
(``road-lerf``: least relevant first), imputed, and the model's target probability is recorded.
``values (N,)``: the mean of that probability over the fractions (the area under the ROAD curve);
``extra["curve"] (N, K)``, ``extra["correct"] (N, K)`` (the imputed image still classified as the
target: its mean over images is the paper's accuracy curve) and ``extra["fractions"]``. A faithful
attribution makes the probability fall fast when the most relevant pixels go (``road-morf``:
**lower is better**) and slowly when the least relevant go (``road-lerf``: **higher is better**).
Images ``(N, C, H, W)`` only (the imputation needs pixel neighbours): InputError otherwise.
Cost: ``N K`` imputations (batched conjugate gradients, one 3x3 convolution per iteration) and
``N K`` forward passes, chunked by ``batch_size`` rows.
"""
from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from fortify.errors import ConfigError, InputError
from fortify.explain.base import DEFAULT_BATCH_SIZE
from fortify.explain.metrics._impute import noisy_linear_impute
from fortify.explain.metrics.base import ATTRIBUTION_METRICS, AttributionMetric
from fortify.explain.ops import chunks, select
from fortify.validation import check_finite_number, forward_checked

__all__ = ["RoadLeRF", "RoadMoRF", "check_fractions", "road_curve"]

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def check_fractions(fractions: object) -> tuple[float, ...]:
    """A non-empty sequence of numbers in [0, 1) (ConfigError otherwise)."""
    if isinstance(fractions, (str, bytes)) or not isinstance(fractions, Sequence) or not fractions:
        raise ConfigError(f"fractions must be a non-empty list of numbers in [0, 1), got {fractions!r}")
    out = tuple(check_finite_number(f, "fractions") for f in fractions)
    if any(not 0 <= f < 1 for f in out):
        raise ConfigError(f"fractions must lie in [0, 1) (some pixels must stay), got {list(out)}")
    return out


def road_curve(model: nn.Module, x: torch.Tensor, attributions: torch.Tensor, target: torch.Tensor, *,
               fractions: Sequence[float], most_relevant_first: bool, noise: float, seed: int,
               batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Target probabilities and correctness ``(N, K)`` after removing and imputing each fraction.
    Row ``(i, k)`` (``k`` major) draws its noise from a generator seeded with ``seed`` and ``k N + i``."""
    if x.dim() != 4:
        raise InputError(f"ROAD imputes removed pixels from their neighbours: x must be images (N, C, H, W), "
                         f"got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    d = h * w
    scores = attributions.sum(dim=1).reshape(n, d)
    order = torch.argsort(scores, dim=1, descending=most_relevant_first, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(d, device=x.device).expand(n, d))
    counts = torch.tensor([round(f * d) for f in fractions], device=x.device)
    probs, correct = [], []
    with torch.no_grad():
        for s in chunks(n * len(fractions), batch_size):
            rows = torch.arange(s.start, s.stop, device=x.device)
            i, k = rows % n, rows // n
            keep = (rank[i] >= counts[k].unsqueeze(1)).reshape(-1, h, w)
            gens = [torch.Generator().manual_seed(seed * 1_000_003 + int(r)) for r in rows]
            pts = noisy_linear_impute(x[i], keep, noise, gens)
            logits = forward_checked(model, pts)
            probs.append(select(torch.softmax(logits, dim=1), target[i]))
            correct.append((logits.argmax(dim=1) == target[i]).to(x.dtype))
    k_ = len(fractions)
    return torch.cat(probs).reshape(k_, n).T, torch.cat(correct).reshape(k_, n).T


class _Road(AttributionMetric):
    """Shared body of ``road-morf`` and ``road-lerf``."""

    most_relevant_first: ClassVar[bool] = True
    stochastic = True

    def __init__(self, fractions: Sequence[float] = FRACTIONS, noise: float = 0.01, seed: int = 0,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(batch_size)
        self.fractions = check_fractions(fractions)
        self.noise = check_finite_number(noise, "noise")
        if self.noise < 0:
            raise ConfigError(f"noise must be >= 0 (a standard deviation), got {noise!r}")
        self.seed = int(seed)

    def _run(self, model: nn.Module, x: torch.Tensor, attributions: torch.Tensor,
             target: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        curve, correct = road_curve(model, x, attributions, target, fractions=self.fractions,
                                    most_relevant_first=self.most_relevant_first, noise=self.noise, seed=self.seed,
                                    batch_size=self.batch_size)
        return curve.mean(dim=1), {"curve": curve, "correct": correct, "fractions": list(self.fractions)}


@ATTRIBUTION_METRICS.register("road-morf", help="ROAD: target probability as the most relevant pixels are imputed (lower is better)")
class RoadMoRF(_Road):
    """ROAD, most relevant first; lower is better."""

    higher_is_better = False
    most_relevant_first = True


@ATTRIBUTION_METRICS.register("road-lerf", help="ROAD: target probability as the least relevant pixels are imputed (higher is better)")
class RoadLeRF(_Road):
    """ROAD, least relevant first; higher is better."""

    higher_is_better = True
    most_relevant_first = False
