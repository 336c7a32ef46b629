"""Geometric corruptions of MNIST-C (Mu & Gilmer 2019): shear, scale, rotate, translate.

Each is an affine inverse map in pixel coordinates ``(col, row)`` applied with :func:`warp_affine`
(bilinear, zeros outside), as MNIST-C's ``skimage.transform.warp(x, inverse_map=aff)``: the output pixel
``p`` reads the input at ``A (p - c) + c + t`` with ``c`` the image centre (fixed by shear, scale and
rotate). The direction (sign) is drawn per image. Cost: one bilinear resampling of the batch.
"""
from __future__ import annotations

import numpy as np
import torch

from fortify.audit.corruptions.base import pixel_scale, random_signs, register_corruption, rotation_matrices, \
    warp_affine


@register_corruption("shear", levels=(0.2, 0.4, 0.6, 0.8, 1.0), default=2,
                     description="shear by +-0.2 .. 1.0 rad about the centre (random direction)")
def shear(x: torch.Tensor, angle: float, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
    """Shear inverse map ``A = [[1, -sin s], [0, cos s]]``, ``s = +-angle`` (skimage < 0.19 ``AffineTransform(
    shear=s)``, as used by MNIST-C); MNIST-C severity 2: 0.4 rad."""
    s = angle * random_signs(rng, x.shape[0])
    zero, one = torch.zeros_like(s), torch.ones_like(s)
    a = torch.stack([torch.stack([one, -torch.sin(s)], -1), torch.stack([zero, torch.cos(s)], -1)], -2)
    return warp_affine(x.detach(), a, torch.zeros(x.shape[0], 2, dtype=torch.float64))


@register_corruption("scale", levels=(1 / 0.9, 1 / 0.8, 1 / 0.7, 1 / 0.6, 1 / 0.5), default=3,
                     description="shrink about the centre by a factor 0.9 .. 0.5")
def scale(x: torch.Tensor, factor: float, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
    """Zoom out: inverse map ``A = factor * I`` (the content shrinks by ``1 / factor``); MNIST-C severity 3: 0.7."""
    n = x.shape[0]
    a = (factor * torch.eye(2, dtype=torch.float64)).expand(n, 2, 2)
    return warp_affine(x.detach(), a, torch.zeros(n, 2, dtype=torch.float64))


@register_corruption("rotate", levels=(0.2, 0.4, 0.6, 0.8, 1.0), default=2,
                     description="rotate by +-0.2 .. 1.0 rad about the centre (random direction)")
def rotate(x: torch.Tensor, angle: float, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
    """Rotation inverse map ``A = R(+-angle)`` about the centre; MNIST-C severity 2: 0.4 rad (23 degrees)."""
    angles = angle * random_signs(rng, x.shape[0])
    return warp_affine(x.detach(), rotation_matrices(angles), torch.zeros(x.shape[0], 2, dtype=torch.float64))


@register_corruption("translate", levels=(1, 2, 3, 4, 5), default=3,
                     description="shift by 1 .. 5 pixels (28x28 units) along each axis, random signs")
def translate(x: torch.Tensor, pixels: int, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
    """Shift by ``(-+d, -+d)`` pixels with ``d = round(pixels * sqrt(HW) / 28)``: ``x'[r, c] = x[r + dy, c + dx]``
    (zeros where that is outside), signs drawn per image and axis; MNIST-C severity 3: 3 pixels."""
    n, _, h, w = x.shape
    d = float(max(1, round(pixels * pixel_scale(h, w))))
    offset = d * torch.stack([random_signs(rng, n), random_signs(rng, n)], -1)
    return warp_affine(x.detach(), torch.eye(2, dtype=torch.float64).expand(n, 2, 2), offset)
