"""Blur corruptions of MNIST-C (Mu & Gilmer 2019): glass blur and motion blur.

* glass blur (Hendrycks & Dietterich 2019): Gaussian blur, then ``iterations`` sweeps that swap each
  interior pixel with a random neighbour at most ``delta`` pixels away (with probability 1/2), then blur
  again. Batched: one sweep visits the ``(H - 2 delta) * (W - 2 delta)`` positions in MNIST-C's order and
  swaps, for every image at once, with that image's own random offset. Cost ``O(iterations * H * W)``
  indexing ops on the batch.
* motion blur (ImageMagick ``-motion-blur radius x sigma + angle``): a one-sided Gaussian kernel of
  ``radius`` taps along a random direction in [-45, 45] degrees, weights ``exp(-i^2 / (2 sigma^2))``,
  edge-replicated. Cost ``radius`` bilinear resamplings of the batch.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fortify.audit.corruptions.base import gaussian_blur, register_corruption


@register_corruption("glass_blur", levels=((0.7, 1, 2), (0.9, 2, 1), (1.0, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
                     default=1, description="Gaussian blur, local pixel shuffling, blur again (sigma, delta, sweeps)")
def glass_blur(x: torch.Tensor, level: tuple[float, int, int], rng: np.random.Generator,
               gen: torch.Generator) -> torch.Tensor:
    """Glass blur with ``(sigma, delta, iterations)``; MNIST-C severity 1: (0.7, 1, 2)."""
    sigma, delta, iterations = level
    blurred = gaussian_blur(x.detach(), sigma)
    arr = blurred.to("cpu", torch.float64).numpy().copy()
    n, _, h, w = arr.shape
    positions = [(r, c) for r in range(h - delta, delta, -1) for c in range(w - delta, delta, -1)]
    for _ in range(iterations):
        swaps = rng.random((len(positions), n)) < 0.5
        offsets = rng.integers(-delta, delta, size=(len(positions), n, 2))
        for p, (r, c) in enumerate(positions):
            who = np.flatnonzero(swaps[p])
            rr, cc = r + offsets[p, who, 0], c + offsets[p, who, 1]
            here = arr[who, :, r, c].copy()
            arr[who, :, r, c] = arr[who, :, rr, cc]
            arr[who, :, rr, cc] = here
    out = torch.from_numpy(arr).to(dtype=x.dtype, device=x.device)
    return gaussian_blur(out, sigma)


@register_corruption("motion_blur", levels=((10, 3.0), (15, 5.0), (15, 8.0), (15, 12.0), (20, 15.0)), default=1,
                     description="one-sided Gaussian motion blur along a random angle in [-45, 45] degrees")
def motion_blur(x: torch.Tensor, level: tuple[int, float], rng: np.random.Generator,
                gen: torch.Generator) -> torch.Tensor:
    """Motion blur with ``(radius, sigma)``; MNIST-C severity 1: (10, 3). ``x'[p] = sum_i w_i x[p - i u]``
    with ``u`` the unit vector at the image's angle and ``w_i ~ exp(-i^2 / (2 sigma^2))``, i = 0..radius-1."""
    radius, sigma = level
    n, _, h, w = x.shape
    angles = torch.from_numpy(np.deg2rad(rng.uniform(-45.0, 45.0, size=n)))
    taps = torch.arange(radius, dtype=torch.float64)
    weights = torch.exp(-0.5 * (taps / sigma) ** 2)
    weights = weights / weights.sum()
    sx, sy = 2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)
    base = F.affine_grid(torch.eye(2, 3, dtype=x.dtype, device=x.device).expand(n, 2, 3), [n, 1, h, w],
                         align_corners=True)
    step = torch.stack([torch.cos(angles) * sx, torch.sin(angles) * sy], -1).to(x.dtype).to(x.device)
    out = torch.zeros_like(x)
    for i in range(radius):
        grid = base - float(taps[i]) * step.view(n, 1, 1, 2)
        out = out + float(weights[i]) * F.grid_sample(x.detach(), grid, mode="bilinear", padding_mode="border",
                                                       align_corners=True)
    return out
