"""Noise corruptions of MNIST-C (Mu & Gilmer 2019): shot (Poisson) noise and impulse (salt-and-pepper) noise.

Both act per value of ``(N, C, H, W)`` in [0, 1]; cost one random draw per value.
"""
from __future__ import annotations

import numpy as np
import torch

from fortify.audit.corruptions.base import register_corruption


@register_corruption("shot_noise", levels=(60.0, 25.0, 12.0, 5.0, 3.0), default=5,
                     description="Poisson photon noise: x' = Poisson(c x) / c, c = 60 .. 3 photons at white")
def shot_noise(x: torch.Tensor, photons: float, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
    """Shot noise ``x' = Poisson(c * x) / c`` (Hendrycks & Dietterich 2019; MNIST-C severity 5: c = 3)."""
    rates = (x.detach().to("cpu", torch.float64) * photons)
    return (torch.poisson(rates, generator=gen) / photons).to(x.dtype).to(x.device)


@register_corruption("impulse_noise", levels=(0.03, 0.06, 0.09, 0.17, 0.27), default=4,
                     description="salt-and-pepper noise on a fraction 0.03 .. 0.27 of the values")
def impulse_noise(x: torch.Tensor, amount: float, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
    """Salt-and-pepper noise: each value is replaced with probability ``amount`` by 0 or 1 (equally likely),
    as ``skimage.util.random_noise(mode="s&p")``; MNIST-C severity 4: amount 0.17."""
    hit = torch.rand(x.shape, generator=gen) < amount
    salt = torch.rand(x.shape, generator=gen) < 0.5
    out = torch.where(hit, salt.to(x.dtype), x.detach().cpu())
    return out.to(x.device)
