"""Photometric and overlay corruptions of MNIST-C (Mu & Gilmer 2019): brightness, stripe, fog, spatter.

* brightness: HSV value ``V + c`` (hue and saturation kept): for one channel ``clip(x + c)``.
* stripe: the outer bands of columns (a quarter of the width on each side in MNIST-C) inverted, ``1 - x``.
* fog: a plasma fractal (diamond-square, Fournier et al. 1982) added, then contrast renormalised:
  ``x' = (x + a F) max(x) / (max(x) + a)``.
* spatter: a thresholded, blurred Gaussian field of mud drops (value 63/255) painted over the image.

Cost: linear in the number of values; fog builds an ``M x M`` fractal per image (``M`` = 256 for images up
to 256 pixels, as MNIST-C), in chunks of 64 images.
"""
from __future__ import annotations

import numpy as np
import torch

from fortify.audit.corruptions.base import gaussian_blur, register_corruption

#: images per chunk of fractals (bounds fog's memory to 64 * 256 * 256 float32 values)
FOG_CHUNK = 64


@register_corruption("brightness", levels=(0.1, 0.2, 0.3, 0.4, 0.5), default=5,
                     description="HSV value raised by 0.1 .. 0.5 (clip(x + c) on grayscale)")
def brightness(x: torch.Tensor, c: float, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
    """``V' = clip(V + c)`` with ``V = max`` over channels and hue/saturation kept: ``x' = x V'/V`` where
    ``V > 0``, else the gray ``V'``; one channel: ``clip(x + c)``. MNIST-C severity 5: c = 0.5."""
    v = x.amax(1, keepdim=True)
    v_new = (v + c).clamp(0.0, 1.0)
    return torch.where(v > 0, x * (v_new / v.clamp_min(1e-12)), v_new.expand_as(x))


@register_corruption("stripe", levels=(0.05, 0.1, 0.15, 0.2, 0.25), default=5,
                     description="invert the left and right 5% .. 25% of the columns (MNIST-C: 7 of 28 each side)")
def stripe(x: torch.Tensor, fraction: float, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
    """``x' = 1 - x`` on the first and last ``round(fraction * W)`` columns; MNIST-C (no severity): 7 of 28."""
    k = max(1, int(round(fraction * x.shape[-1])))
    out = x.detach().clone()
    out[..., :k] = 1.0 - out[..., :k]
    out[..., -k:] = 1.0 - x[..., -k:]
    return out


def plasma_fractal(n: int, size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` diamond-square height maps ``(n, size, size)`` in [0, 1] (``size`` a power of two).

    Each level fills square centres then diamond centres with the mean of their corners plus uniform noise
    ``wibble * U[-wibble, wibble]``; ``wibble`` starts at 100 and is divided by ``decay`` per level
    (MNIST-C's ``plasma_fractal``). Each map is shifted and scaled to [0, 1]."""
    maps = np.zeros((n, size, size), dtype=np.float64)
    step, wibble = size, 100.0

    def noisy_mean(total: np.ndarray) -> np.ndarray:
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = maps[:, 0:size:step, 0:size:step]
        sq = corners + np.roll(corners, -1, axis=1)
        sq = sq + np.roll(sq, -1, axis=2)
        maps[:, half:size:step, half:size:step] = noisy_mean(sq)
        centres = maps[:, half:size:step, half:size:step]
        corners = maps[:, 0:size:step, 0:size:step]
        rows = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        maps[:, 0:size:step, half:size:step] = noisy_mean(rows)
        cols = centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        maps[:, half:size:step, 0:size:step] = noisy_mean(cols)
        step //= 2
        wibble /= decay
    lo = maps.min(axis=(1, 2), keepdims=True)
    maps -= lo
    return maps / np.maximum(maps.max(axis=(1, 2), keepdims=True), 1e-12)


@register_corruption("fog", levels=((1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)), default=5,
                     description="plasma-fractal fog of strength 1.5 .. 3.0, contrast renormalised")
def fog(x: torch.Tensor, level: tuple[float, float], rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
    """Fog with ``(a, decay)``: ``x' = (x + a F) * max(x) / (max(x) + a)``, ``F`` the top-left ``H x W`` of a
    fractal, one per image shared by its channels; ``max`` per image. MNIST-C severity 5: (3.0, 1.4)."""
    strength, decay = level
    n, _, h, w = x.shape
    size = max(256, 1 << (max(h, w) - 1).bit_length())
    parts = []
    for start in range(0, n, FOG_CHUNK):
        m = min(FOG_CHUNK, n - start)
        parts.append(plasma_fractal(m, size, decay, rng)[:, :h, :w].astype(np.float32))
    fractal = torch.from_numpy(np.concatenate(parts)).to(x.dtype).to(x.device).unsqueeze(1)
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + strength * fractal) * peak / (peak + strength)


@register_corruption("spatter", levels=((0.65, 0.3, 4.0, 0.69, 0.6), (0.65, 0.3, 3.0, 0.68, 0.6),
                                        (0.65, 0.3, 2.0, 0.68, 0.5), (0.65, 0.3, 1.0, 0.65, 1.5),
                                        (0.67, 0.4, 1.0, 0.65, 1.5)), default=4,
                     description="mud spatter: blurred thresholded Gaussian drops painted at 63/255")
def spatter(x: torch.Tensor, level: tuple[float, float, float, float, float], rng: np.random.Generator,
            gen: torch.Generator) -> torch.Tensor:
    """Spatter with ``(loc, scale, sigma, threshold, sigma_mask)``: a field ``N(loc, scale^2)`` blurred by
    ``sigma``, cut at ``threshold``, the mask blurred by ``sigma_mask`` and kept where >= 0.8, then
    ``x' = x (1 - m) + (63/255) m``; one mask per image shared by its channels. MNIST-C severity 4."""
    loc, spread, sigma, threshold, sigma_mask = level
    n, _, h, w = x.shape
    field = (loc + spread * torch.randn(n, 1, h, w, generator=gen, dtype=torch.float64))
    field = gaussian_blur(field, sigma)
    mask = gaussian_blur((field > threshold).to(torch.float64), sigma_mask)
    mask = torch.where(mask < 0.8, torch.zeros_like(mask), mask).to(x.dtype).to(x.device)
    return x * (1 - mask) + (63.0 / 255.0) * mask
