"""Canny edges (Canny 1986) of MNIST-C (Mu & Gilmer 2019): the image replaced by its edge map.

Batched numpy/scipy implementation of the steps of ``skimage.feature.canny`` (no scikit-image needed):
Gaussian smoothing with border compensation (the smoothed image divided by the smoothed all-ones mask),
Sobel gradients, non-maximum suppression along the gradient direction quantised to 0/45/90/135 degrees
(scikit-image interpolates between neighbours instead), a one-pixel border removed, then hysteresis:
pixels above ``low`` kept when their 8-connected component holds a pixel above ``high`` (thresholds on
the Sobel magnitude, scikit-image's defaults for float images: 0.1 and 0.2). Colour images use their
luminance; the edge map (0 or 1) is repeated over the channels. Cost ``O(N H W)`` plus one labelling pass.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from fortify.audit.corruptions.base import luminance, register_corruption

#: hysteresis thresholds on the Sobel magnitude (scikit-image's defaults for float images)
LOW, HIGH = 0.1, 0.2


def _shift(a: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """``out[:, r, c] = a[:, r + dr, c + dc]`` with zeros outside."""
    out = np.zeros_like(a)
    h, w = a.shape[1:]
    out[:, max(0, -dr):h - max(0, dr), max(0, -dc):w - max(0, dc)] = \
        a[:, max(0, dr):h - max(0, -dr), max(0, dc):w - max(0, -dc)]
    return out


def canny(images: np.ndarray, sigma: float, low: float = LOW, high: float = HIGH) -> np.ndarray:
    """Boolean edge maps ``(N, H, W)`` of grayscale ``images`` ``(N, H, W)`` in [0, 1]."""
    ones = np.ones_like(images)
    sig = (0.0, sigma, sigma)
    smoothed = ndimage.gaussian_filter(images, sig, mode="constant") / np.maximum(
        ndimage.gaussian_filter(ones, sig, mode="constant"), 1e-12)
    gr, gc = ndimage.sobel(smoothed, axis=1), ndimage.sobel(smoothed, axis=2)
    mag = np.hypot(gr, gc)
    angle = (np.rad2deg(np.arctan2(gr, gc)) + 180.0) % 180.0
    sector = ((angle + 22.5) // 45.0).astype(np.int64) % 4  # 0: along columns, 1: 45deg, 2: along rows, 3: 135deg
    keep = np.zeros(mag.shape, dtype=bool)
    for k, (dr, dc) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
        local_max = (mag >= _shift(mag, dr, dc)) & (mag >= _shift(mag, -dr, -dc))
        keep |= (sector == k) & local_max
    keep[:, 0, :] = keep[:, -1, :] = False
    keep[:, :, 0] = keep[:, :, -1] = False
    weak = keep & (mag >= low)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    labels, count = ndimage.label(weak, structure=structure)
    if count == 0:
        return np.zeros_like(weak)
    strong = np.zeros(count + 1, dtype=bool)
    strong[np.unique(labels[weak & (mag >= high)])] = True
    strong[0] = False
    return strong[labels]


@register_corruption("canny_edges", levels=(1.0, 1.5, 2.0, 2.5, 3.0), default=1,
                     description="the image replaced by its Canny edge map (smoothing sigma 1 .. 3)")
def canny_edges(x: torch.Tensor, sigma: float, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
    """Canny edge map with Gaussian ``sigma``; MNIST-C (no severity): sigma 1, scikit-image's default."""
    gray = luminance(x.detach()).squeeze(1).to("cpu", torch.float64).numpy()
    edges = torch.from_numpy(canny(gray, sigma)).to(x.dtype).to(x.device)
    return edges.unsqueeze(1).expand_as(x).contiguous()
