"""Canny edges (Canny 1986) of MNIST-C (Mu & Gilmer 2019): the image replaced by its edge map.

Batched numpy/scipy implementation of the steps of ``skimage.feature.canny`` (no scikit-image needed):
Gaussian smoothing with border compensation (the smoothed image divided by the smoothed all-ones mask),
Sobel gradients, non-maximum suppression along the gradient direction with linear interpolation between
the two neighbours it passes between, a one-pixel border removed, then hysteresis:
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
#: Sobel kernel of the derivative along rows (``scipy.ndimage.sobel(axis=0)``); its transpose: along columns
SOBEL_ROWS = np.array([[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]])


def _shift(a: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """``out[:, r, c] = a[:, r + dr, c + dc]`` with zeros outside."""
    out = np.zeros_like(a)
    h, w = a.shape[1:]
    out[:, max(0, -dr):h - max(0, dr), max(0, -dc):w - max(0, dc)] = \
        a[:, max(0, dr):h - max(0, -dr), max(0, dc):w - max(0, -dc)]
    return out


def _local_maxima(mag: np.ndarray, gr: np.ndarray, gc: np.ndarray) -> np.ndarray:
    """Non-maximum suppression with interpolation: ``mag`` must be >= its value one step forward and one step
    back along the gradient, where a step moves 1 along the dominant axis and ``w = minor / major`` along
    the other, read as ``(1 - w) * axis neighbour + w * diagonal neighbour`` (Canny's interpolated test)."""
    sr, sc = np.sign(gr).astype(np.int64), np.sign(gc).astype(np.int64)
    rows_major = np.abs(gr) >= np.abs(gc)
    major, minor = np.where(rows_major, np.abs(gr), np.abs(gc)), np.where(rows_major, np.abs(gc), np.abs(gr))
    w = np.divide(minor, major, out=np.zeros_like(major), where=major > 0)
    shifted = {(dr, dc): _shift(mag, dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)}
    keep = np.ones(mag.shape, dtype=bool)
    for direction in (1, -1):
        axis = np.zeros_like(mag)
        diag = np.zeros_like(mag)
        for (dr, dc), values in shifted.items():
            axis_here = np.where(rows_major, (direction * sr == dr) & (dc == 0), (dr == 0) & (direction * sc == dc))
            axis = np.where(axis_here, values, axis)
            diag = np.where((direction * sr == dr) & (direction * sc == dc), values, diag)
        keep &= mag >= (1.0 - w) * axis + w * diag
    return keep & (mag > 0)


def canny(images: np.ndarray, sigma: float, low: float = LOW, high: float = HIGH) -> np.ndarray:
    """Boolean edge maps ``(N, H, W)`` of grayscale ``images`` ``(N, H, W)`` in [0, 1]."""
    ones = np.ones_like(images)
    sig = (0.0, sigma, sigma)
    smoothed = ndimage.gaussian_filter(images, sig, mode="constant") / np.maximum(
        ndimage.gaussian_filter(ones, sig, mode="constant"), 1e-12)
    # Sobel per image (scipy's ndimage.sobel would also smooth across the batch axis)
    gr = ndimage.correlate(smoothed, SOBEL_ROWS[None], mode="reflect")
    gc = ndimage.correlate(smoothed, SOBEL_ROWS.T[None], mode="reflect")
    mag = np.hypot(gr, gc)
    keep = _local_maxima(mag, gr, gc)
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
