"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019, "Certified adversarial robustness via
randomized smoothing").

The smoothed classifier ``g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c)`` is robust in l2 within
``R = sigma * Phi^-1(p_A)`` where ``p_A`` lower-bounds the top-class probability.

* ``certify``: ``n0`` noise draws select the top class ``c_A``; ``n`` fresh draws count ``n_A``;
  ``p_lower`` is the one-sided ``(1 - alpha)`` Clopper-Pearson lower confidence bound
  ``Beta^-1(alpha; n_A, n - n_A + 1)``; abstain when ``p_lower <= 1/2``, else radius
  ``sigma * Phi^-1(p_lower)``.
* ``predict``: ``n`` draws, the two most frequent classes ``n_A >= n_B``; abstain unless the
  two-sided binomial test of ``n_A`` out of ``n_A + n_B`` at 1/2 has p-value ``<= alpha``.

Noise is sampled in batches of ``batch_size`` rows across inputs (``(N*n, ...)`` split into
chunks), not one input at a time. Abstentions are ``-1``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import ndtri
from scipy.stats import binomtest
from torch import nn

from fortify import progress
from fortify.models.state import frozen
from fortify.certify.base import CERTIFIERS, Certificate, Certifier
from fortify.errors import ConfigError, ThreatModelError
from fortify.stats import clopper_pearson_lower
from fortify.threat import ThreatModel

ABSTAIN = -1


@dataclass
class SmoothingResult:
    """``prediction (N,)`` int (-1 abstain), ``p_lower (N,)``, ``radius (N,)`` (0 on abstain),
    ``counts (N, K)`` of the estimation draws."""

    prediction: torch.Tensor
    p_lower: torch.Tensor
    radius: torch.Tensor
    counts: torch.Tensor


def noise_counts(
    model: nn.Module, x: torch.Tensor, sigma: float, n: int, batch_size: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Class counts ``(N, K)`` of ``f(x_i + sigma * eps)`` over ``n`` Gaussian draws per input."""
    total = x.shape[0] * n
    counts: torch.Tensor | None = None
    with progress.task(f"smoothing: {n} noise draws per image", total=-(-total // batch_size), unit="batches") as bar:
        for s in range(0, total, batch_size):
            idx = torch.arange(s, min(total, s + batch_size), device=x.device) // n
            xb = x[idx]
            dev = generator.device if generator is not None else x.device
            noise = torch.randn(xb.shape, generator=generator, dtype=x.dtype, device=dev).to(x.device)
            pred = model(xb + sigma * noise).argmax(dim=1)
            if counts is None:
                k = model(x[:1]).shape[1]
                counts = torch.zeros(x.shape[0], k, dtype=torch.long, device=x.device)
            counts.index_put_((idx, pred), torch.ones_like(pred), accumulate=True)
            bar.advance()
    return counts  # type: ignore[return-value]


class Smoothing(Certifier):
    """Randomized-smoothing certifier (l2). ``certified = (prediction == y) & (radius >= eps)``;
    ``lower_margin = radius - eps`` (``-inf`` where abstaining or wrong)."""

    norms = ("l2",)

    def __init__(self, sigma: float = 0.25, n0: int = 100, n: int = 1000, alpha: float = 0.001,
                 batch_size: int = 1000, seed: int | None = 0) -> None:
        if not sigma > 0:
            raise ConfigError(f"sigma must be > 0, got {sigma!r}")
        if int(n0) < 1 or int(n) < 1 or int(batch_size) < 1:
            raise ConfigError("n0, n and batch_size must be >= 1")
        if not 0 < alpha < 1:
            raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}")
        self.sigma, self.n0, self.n, self.alpha = float(sigma), int(n0), int(n), float(alpha)
        self.batch_size, self.seed = int(batch_size), seed

    def _gen(self) -> torch.Generator | None:
        return torch.Generator().manual_seed(self.seed) if self.seed is not None else None

    def certify(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator | None = None) -> SmoothingResult:
        """Cohen et al.'s CERTIFY for a batch ``x (N, ...)`` (eval mode for the call, flags restored)."""
        gen = generator if generator is not None else self._gen()
        with torch.no_grad(), frozen(model):
            c_a = noise_counts(model, x, self.sigma, self.n0, self.batch_size, gen).argmax(dim=1)
            counts = noise_counts(model, x, self.sigma, self.n, self.batch_size, gen)
        n_a = counts.gather(1, c_a[:, None]).squeeze(1).cpu().numpy()
        p_low = clopper_pearson_lower(n_a, self.n, self.alpha)
        ok = p_low > 0.5
        radius = np.where(ok, self.sigma * ndtri(np.where(ok, p_low, 0.75)), 0.0)
        pred = torch.where(torch.as_tensor(ok, device=x.device), c_a, torch.full_like(c_a, ABSTAIN))
        return SmoothingResult(pred, torch.as_tensor(p_low, dtype=torch.float64),
                               torch.as_tensor(radius, dtype=torch.float64), counts)

    def predict(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Cohen et al.'s PREDICT: ``(N,)`` class or -1 (abstain) at level ``alpha`` with ``n`` draws."""
        gen = generator if generator is not None else self._gen()
        with torch.no_grad(), frozen(model):
            counts = noise_counts(model, x, self.sigma, self.n, self.batch_size, gen)
        top2 = counts.topk(2, dim=1)
        out = top2.indices[:, 0].clone()
        for i in range(x.shape[0]):
            na, nb = int(top2.values[i, 0]), int(top2.values[i, 1])
            if binomtest(na, na + nb, 0.5).pvalue > self.alpha:
                out[i] = ABSTAIN
        return out

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> Certificate:
        if threat.per_feature:  # Cohen et al.'s radius is isotropic l2 in input units over every feature
            raise ThreatModelError("smoothing certifies an isotropic l2 radius in input units: a threat with "
                                   "per-feature bounds, a mask or a scale is not supported (use ibp or crown)")
        res = self.certify(model, x)
        radius = res.radius.to(torch.float32).to(x.device)
        good = res.prediction == y
        certified = good & (radius >= threat.eps)
        lower = torch.where(good, radius - threat.eps, torch.full_like(radius, float("-inf")))
        return Certificate(lower, certified, self.name, radius=torch.where(good, radius, torch.zeros_like(radius)),
                           extra={"prediction": res.prediction, "p_lower": res.p_lower, "counts": res.counts})


CERTIFIERS.register("smoothing", Smoothing, help="randomized smoothing, l2 (Cohen et al. 2019)")
