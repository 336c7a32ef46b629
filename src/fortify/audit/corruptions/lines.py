"""Line corruptions of MNIST-C (Mu & Gilmer 2019): dotted line and zigzag, drawn over the image.

A line segment from ``(c0, r0)`` to ``(c1, r1)`` (column, row) is drawn with MNIST-C's profile
``clip(1 + log(1 - d / 2.3))`` of the vertical distance ``d`` to the line, between columns ``floor(c0)``
and ``ceil(c1)``; strokes are added to the image and clipped (white lines on MNIST's black background).
Lengths are written for 28x28 and scaled by ``sqrt(HW) / 28``. Every line is the same for all channels.
Severity = number of lines per image (MNIST-C: one). Cost: ``O(lines * H * W)`` numpy per image.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from fortify.audit.corruptions.base import pixel_scale, register_corruption

#: MNIST-C's stroke half-width (pixels at 28x28) in ``1 + log(1 - d / 2.3)``
STROKE = 2.3


def line_from_points(c0: float, r0: float, c1: float, r1: float, h: int, w: int, width: float = STROKE) -> np.ndarray:
    """``(h, w)`` stroke intensity in [0, 1] of the segment ``(c0, r0) -> (c1, r1)``; zeros if ``c1 == c0``."""
    if c1 == c0:
        return np.zeros((h, w))
    cols = np.arange(w, dtype=np.float64)[None, :]
    rows = np.arange(h, dtype=np.float64)[:, None]
    slope = (r1 - r0) / (c1 - c0)
    dist = np.clip(np.abs(rows - (slope * (cols - c0) + r0)), 0.0, width - 1e-10)
    stroke = np.clip(np.log(1.0 - dist / width) + 1.0, 0.0, 1.0)
    stroke[:, :max(0, int(math.floor(c0)))] = 0.0
    stroke[:, max(0, int(math.ceil(c1))):] = 0.0
    return stroke


def _overlay(x: torch.Tensor, strokes: np.ndarray) -> torch.Tensor:
    layer = torch.from_numpy(strokes).to(x.dtype).to(x.device).unsqueeze(1)
    return (x + layer).clamp(0.0, 1.0)


@register_corruption("dotted_line", levels=(1, 2, 3, 4, 5), default=1,
                     description="1 .. 5 dotted lines across the image (MNIST-C: one)")
def dotted_line(x: torch.Tensor, lines: int, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
    """Lines from the left to the right border at random rows, with alternate 2-column blocks erased."""
    n, _, h, w = x.shape
    dash = max(1, round(2 * pixel_scale(h, w)))
    keep = (np.arange(w) // dash) % 2 == 1
    strokes = np.zeros((n, h, w))
    for i in range(n):
        for _ in range(lines):
            r0, r1 = rng.integers(0, h - 1, size=2)
            strokes[i] += line_from_points(0.0, float(r0), float(w - 1), float(r1), h, w) * keep
    return _overlay(x, np.clip(strokes, 0.0, 1.0))


def zigzag_strokes(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """One zigzag ``(h, w)``: teeth of length and height 2 (28x28 units) along a slightly tilted line from
    column 2 to 25, starting at a random row (MNIST-C's ``zigzag``)."""
    s = pixel_scale(h, w)
    a = b = 2.0 * s
    c0, c1 = 2.0 * w / 28.0, 25.0 * w / 28.0
    r0 = float(rng.integers(0, h - 1))
    r1 = r0 + float(rng.integers(-5, 5)) * s
    theta = math.atan((r1 - r0) / (c1 - c0))
    length = (c1 - c0) / math.cos(theta)
    ends = [(0.0, 0.0)]
    r_i = 0.0
    for i in range(int((length - a) // (2 * a)) + 1):
        r_i = (-1) ** i * b
        ends.append(((2 * i + 1) * a, r_i))
    last = (2 * a) * (length // (2 * a))
    if length != last:
        ends.append((length, r_i / (2 * (length - last))))
    pts = np.array(ends).T
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    cs, rs = rot @ pts
    cs, rs = cs + c0, rs + r0
    out = np.zeros((h, w))
    for j in range(1, pts.shape[1]):
        out = np.clip(out + line_from_points(cs[j - 1], rs[j - 1], cs[j], rs[j], h, w), 0.0, 1.0)
    return out


@register_corruption("zigzag", levels=(1, 2, 3, 4, 5), default=1,
                     description="1 .. 5 zigzag lines across the image (MNIST-C: one)")
def zigzag(x: torch.Tensor, lines: int, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
    """Zigzag lines added to the image (MNIST-C severity: one line)."""
    n, _, h, w = x.shape
    strokes = np.zeros((n, h, w))
    for i in range(n):
        for _ in range(lines):
            strokes[i] = np.clip(strokes[i] + zigzag_strokes(h, w, rng), 0.0, 1.0)
    return _overlay(x, strokes)
