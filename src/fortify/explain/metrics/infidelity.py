"""Infidelity (Yeh, Hsieh, Suggala, Inouye & Ravikumar 2019, "On the (in)fidelity and sensitivity of
explanations").

``INFD(a, f, x) = E_I[(I . a - (f_t(x) - f_t(x - I)))^2]`` with Gaussian perturbations
``I ~ N(0, noise^2)`` (``samples`` draws per example, from :func:`infidelity_noise`: shape
``(N, samples, *sample)``, seeded). ``normalize=True`` first rescales the attribution by the
optimal ``beta`` (Captum's ``normalize``). Matches Captum's ``infidelity`` given the same
perturbations. **Lower is better**. Cost: ``N (samples + 1)`` forward passes (chunked).
"""
from __future__ import annotations

import torch
from torch import nn

from fortify.errors import ConfigError
from fortify.explain.base import DEFAULT_BATCH_SIZE, check_positive_int
from fortify.explain.metrics.base import ATTRIBUTION_METRICS, AttributionMetric
from fortify.explain.ops import chunks, select, target_scores
from fortify.validation import check_finite_number, forward_checked


def infidelity_noise(x: torch.Tensor, samples: int, noise: float, seed: int) -> torch.Tensor:
    """``(N, samples, *sample)`` Gaussian perturbations with std ``noise`` (CPU generator, seed)."""
    g = torch.Generator().manual_seed(seed)
    shape = (x.shape[0], samples) + tuple(x.shape[1:])
    return (torch.randn(shape, generator=g, dtype=x.dtype) * noise).to(x.device)


@ATTRIBUTION_METRICS.register("infidelity", help="expected squared error of a . I against f(x) - f(x - I) (lower is better)")
class Infidelity(AttributionMetric):
    """Infidelity under Gaussian perturbations; lower is better."""

    higher_is_better = False
    stochastic = True

    def __init__(self, samples: int = 10, noise: float = 0.1, seed: int = 0, normalize: bool = False,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(batch_size)
        self.samples = check_positive_int(samples, "samples")
        self.noise = check_finite_number(noise, "noise")
        if self.noise <= 0:
            raise ConfigError(f"noise must be > 0 (a standard deviation), got {noise!r}")
        self.seed, self.normalize = int(seed), bool(normalize)
        self._cache: tuple[tuple[object, ...], torch.Tensor] | None = None

    def _noise(self, x: torch.Tensor) -> torch.Tensor:
        """:func:`infidelity_noise` for ``x``'s shape, dtype and device, drawn once per instance and shape
        (the draw is a pure function of the seed and the shape; kept for the next call: the
        perturbations are the largest tensor of the metric and drawing them costs ~10% of a call on a
        small CNN). ``(N, samples, *sample)``."""
        key = (tuple(x.shape), x.dtype, x.device)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, infidelity_noise(x, self.samples, self.noise, self.seed))
        return self._cache[1]

    def _run(self, model: nn.Module, x: torch.Tensor, attributions: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n, s = x.shape[0], self.samples
        pert = self._noise(x)
        moved = (x.unsqueeze(1) - pert).reshape((n * s,) + tuple(x.shape[1:]))  # row i * s + k: x_i - I_ik
        rows_t = target.repeat_interleave(s)
        clean = target_scores(model, x, target, self.batch_size)
        out = []
        with torch.no_grad():
            for c in chunks(n * s, self.batch_size):
                out.append(select(forward_checked(model, moved[c]), rows_t[c]))
        drop = clean.unsqueeze(1) - torch.cat(out).reshape(n, s)
        dot = torch.bmm(pert.reshape(n, s, -1), attributions.reshape(n, -1, 1)).squeeze(2)  # (N, samples): I . a
        if not self.normalize:
            return ((dot - drop) ** 2).mean(dim=1)
        a, b, c2 = (dot * dot).sum(1), (dot * drop).sum(1), (drop * drop).sum(1)
        beta = torch.where(a == 0, torch.zeros_like(a), b / torch.where(a == 0, torch.ones_like(a), a))
        return (beta * beta * a - 2 * beta * b + c2) / s
