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

    def _run(self, model: nn.Module, x: torch.Tensor, attributions: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n, s = x.shape[0], self.samples
        pert = infidelity_noise(x, s, self.noise, self.seed).reshape((n * s,) + tuple(x.shape[1:]))
        rows_t = target.repeat_interleave(s)
        clean = target_scores(model, x, target, self.batch_size).repeat_interleave(s)
        out = []
        with torch.no_grad():
            for c in chunks(n * s, self.batch_size):
                xi = x[torch.arange(c.start, c.stop, device=x.device) // s]
                out.append(select(forward_checked(model, xi - pert[c]), rows_t[c]))
        drop = (clean - torch.cat(out)).reshape(n, s)
        dot = (attributions.repeat_interleave(s, dim=0) * pert).reshape(n, s, -1).sum(dim=2)
        if not self.normalize:
            return ((dot - drop) ** 2).mean(dim=1)
        a, b, c2 = (dot * dot).sum(1), (dot * drop).sum(1), (drop * drop).sum(1)
        beta = torch.where(a == 0, torch.zeros_like(a), b / torch.where(a == 0, torch.ones_like(a), a))
        return (beta * beta * a - 2 * beta * b + c2) / s
