"""SmoothGrad, SmoothGrad-squared and VarGrad: input gradients averaged over noisy copies of ``x``.

* SmoothGrad (Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise"):
  ``mean_s g(x + e_s)`` with ``e_s ~ N(0, noise^2)`` (``noise`` in input units, as Captum's
  ``stdevs``).
* SmoothGrad-squared (Hooker et al. 2019, "A benchmark for interpretability methods"):
  ``mean_s g(x + e_s)^2``.
* VarGrad (Adebayo et al. 2018, "Local explanation methods for deep neural networks lack
  sensitivity to parameter values"): ``mean_s g^2 - (mean_s g)^2`` (population variance).

``g`` is the gradient of the target logit (its absolute value with ``absolute=True``). The noise is
drawn once per call from a generator seeded with ``seed`` (:func:`smoothgrad_noise`: shape
``(samples, N, *sample)``, row ``k * N + i`` is sample ``k`` of example ``i``), so a call is
reproducible and independent of ``batch_size``. Shapes: ``x (N, *sample) -> (N, *sample)``.
Cost: ``N x samples`` forward and backward passes run ``batch_size`` rows at a time, plus the
noise tensor (``samples x N x sample`` numbers).
"""
from __future__ import annotations

import torch
from torch import nn

from fortify.errors import ConfigError
from fortify.explain.base import ATTRIBUTIONS, DEFAULT_BATCH_SIZE, Attribution, check_positive_int
from fortify.explain.ops import repeated_grad
from fortify.validation import check_finite_number


def smoothgrad_noise(x: torch.Tensor, samples: int, noise: float, seed: int) -> torch.Tensor:
    """The Gaussian noise a call uses: ``(samples, N, *sample)``, std ``noise``, drawn on the CPU from
    ``torch.Generator().manual_seed(seed)`` and moved to ``x``'s device."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn((samples,) + tuple(x.shape), generator=g, dtype=x.dtype) * noise).to(x.device)


class _NoisyGradients(Attribution):
    stochastic = True

    def __init__(self, samples: int = 50, noise: float = 0.15, seed: int = 0, absolute: bool = False,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(batch_size)
        self.samples = check_positive_int(samples, "samples")
        self.noise = check_finite_number(noise, "noise")
        if self.noise < 0:
            raise ConfigError(f"noise must be >= 0 (a standard deviation), got {noise!r}")
        self.seed = int(seed)
        self.absolute = bool(absolute)

    def _run(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        eps = smoothgrad_noise(x, self.samples, self.noise, self.seed).reshape((-1,) + tuple(x.shape[1:]))

        def points(s: slice) -> torch.Tensor:
            rows = torch.arange(s.start, s.stop, device=x.device)
            return x[rows % n] + eps[s]

        g = repeated_grad(model, points, n * self.samples, target.repeat(self.samples), self.batch_size)
        g = g.reshape((self.samples,) + tuple(x.shape))
        return self._aggregate(g.abs() if self.absolute else g)

    def _aggregate(self, g: torch.Tensor) -> torch.Tensor:
        """``(samples, N, *sample) -> (N, *sample)``."""
        raise NotImplementedError


@ATTRIBUTIONS.register("smoothgrad", help="gradients averaged over Gaussian-noised inputs (Smilkov et al. 2017)")
class SmoothGrad(_NoisyGradients):
    """``mean_s g(x + e_s)``."""

    def _aggregate(self, g: torch.Tensor) -> torch.Tensor:
        return g.mean(dim=0)


@ATTRIBUTIONS.register("smoothgrad-sq", help="squared gradients averaged over noisy inputs (Hooker et al. 2019)")
class SmoothGradSquared(_NoisyGradients):
    """``mean_s g(x + e_s)^2``."""

    def _aggregate(self, g: torch.Tensor) -> torch.Tensor:
        return (g * g).mean(dim=0)


@ATTRIBUTIONS.register("vargrad", help="variance of gradients over noisy inputs (Adebayo et al. 2018)")
class VarGrad(_NoisyGradients):
    """``mean_s g^2 - (mean_s g)^2``."""

    def _aggregate(self, g: torch.Tensor) -> torch.Tensor:
        m = g.mean(dim=0)
        return (g * g).mean(dim=0) - m * m
